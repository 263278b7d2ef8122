"""Under 4,000 parameters: V36's layout at widths 6-8-10-12-12 (3,856), V36's recipe."""

import os
import runpy

# By path, not `from configs import v36`: a config file is loaded by path and
# the repo root need not be importable.
_V36 = runpy.run_path(os.path.join(os.path.dirname(__file__), 'v36.py'))


def get_config():
  c = _V36['get_config']()
  # The widest V36 layout under 4,000 that keeps V36's widening channel order:
  # every layer at about 0.75x V36's widths (8-10-12-16-16). docs/research.md.
  c.model = 'v36:6-8-10-12-12'
  return c

"""tools/writer_bootstrap.py's standard error: whole writers redrawn."""

import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'writer_bootstrap', os.path.join(ROOT, 'tools', 'writer_bootstrap.py'))
writer_bootstrap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer_bootstrap)


def test_a_difference_from_one_writer_is_uncertain_and_one_shared_by_all_is_not():
  # 20 writers of 100 digits in each of two series.
  writer = np.repeat(np.arange(40), 100)
  series = np.where(writer < 20, 0, 4)
  one = np.zeros(4000)
  one[:50] = 1  # 50 digits of writer 0 only: a mean of 0.0125
  # Writer 0 is drawn Binomial(20, 1/20) times: sd 0.975 draws of 50 digits among 4,000.
  expected = np.sqrt(20 * 0.05 * 0.95) * 50 / 4000
  se = writer_bootstrap.bootstrap_se(one, writer, series)
  assert abs(se - expected) < 0.1 * expected, (se, expected)
  shared = np.zeros(4000)
  shared[::80] = 1  # the same 50 digits' worth, 1 or 2 per writer of series 0 and 4
  shared_se = writer_bootstrap.bootstrap_se(shared, writer, series)
  assert shared_se < 0.5 * se

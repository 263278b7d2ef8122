"""Shared fixtures: the real MNIST directory, when CI or the user provides it."""

import os

import pytest


@pytest.fixture(scope='session')
def mnist_dir() -> str:
  path = os.environ.get('MNIST_DIR', '')
  if not path:
    pytest.skip('MNIST_DIR is not set: real-data tests need the four MNIST IDX '
                'files (.ci/run sets it to ../shared/mnist)')
  return path

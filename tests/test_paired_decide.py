"""tools/paired_decide.py: the rule of the paired screens in docs/research.md."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _arm(tmp_path, name, final3, epoch_s, unfinished=()):
  """An arm whose seed s ends at final3[s] (its last three epochs equal), each
  epoch taking epoch_s; seeds in `unfinished` stop after 5 epochs."""
  for seed, accuracy in enumerate(final3):
    run = tmp_path / name / f'seed_{seed}'
    run.mkdir(parents=True)
    epochs = 5 if seed in unfinished else 15
    (run / 'config.json').write_text(json.dumps({'num_epochs': 15}))
    with open(run / 'metrics.jsonl', 'w') as f:
      for epoch in range(1, epochs + 1):
        f.write(json.dumps({'epoch': epoch, 'test_accuracy': accuracy - (epoch < 13),
                            'epoch_time_s': epoch_s}) + '\n')
  return str(tmp_path / name)


def _decide(*args):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'paired_decide.py'), *args],
                        capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, 'PYTHONPATH': ROOT})
  return proc


def test_a_challenger_needs_the_margin_then_the_fastest_within_one_se_is_taken(tmp_path):
  incumbent = _arm(tmp_path, 'incumbent', [99.10, 99.20, 99.15, 99.12], epoch_s=60)
  # +0.10 on every seed but one (+0.08): paired SE 0.005, far beyond 2 SE.
  better = _arm(tmp_path, 'better', [99.20, 99.30, 99.25, 99.20], epoch_s=90)
  # Within one SE of `better` (its differences: -0.01, +0.01, -0.01, +0.01) and faster.
  twin = _arm(tmp_path, 'twin', [99.19, 99.31, 99.24, 99.21], epoch_s=70)
  proc = _decide(incumbent, better, twin)
  assert proc.returncode == 0, proc.stderr
  decision = json.loads(proc.stdout[:proc.stdout.rindex('}') + 1])
  assert decision['best_challenger'] == better and decision['winner'] == better
  assert set(decision['within_one_se_of_winner']) == {better, twin}
  assert proc.stdout.strip().splitlines()[-1] == twin == decision['chosen']


def test_the_incumbent_stays_inside_the_margin_and_unfinished_seeds_do_not_count(tmp_path):
  incumbent = _arm(tmp_path, 'incumbent', [99.10, 99.20, 99.15, 99.12], epoch_s=60)
  # +0.05, -0.05, +0.05 on the finished seeds: a mean gain of 0.017, SE 0.033, under 2 SE.
  noisy = _arm(tmp_path, 'noisy', [99.15, 99.15, 99.20, 99.50], epoch_s=50, unfinished=(3,))
  proc = _decide('--margin=2', incumbent, noisy)
  decision = json.loads(proc.stdout[:proc.stdout.rindex('}') + 1])
  assert decision['seeds'] == [0, 1, 2]
  assert decision['winner'] == incumbent
  # The challenger is within one SE of the incumbent and faster: taken by the tie rule.
  assert decision['chosen'] == noisy


def test_too_few_finished_seeds_is_a_one_line_error(tmp_path):
  proc = _decide(_arm(tmp_path, 'a', [99.1], 60), _arm(tmp_path, 'b', [99.2], 60))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      'error: only seeds [0] have finished in every arm; a paired standard error needs at least 2']

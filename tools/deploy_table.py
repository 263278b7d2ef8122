"""The deploy table of docs/deploy.md from export's JSON reports.

python tools/deploy_table.py REPORT.json ... prints one Markdown row per report
(network, format, quantization, accuracy against the float JAX model's,
differing predictions, largest logit difference, size, one-image latency, the
float JAX model's latency in brackets).
"""

import json
import sys


def main(paths: list[str]) -> None:
  print('| network | export | accuracy (float JAX, change) | differing | max abs logit diff '
        '| bytes | latency (float JAX) |')
  print('| --- | --- | ---: | ---: | ---: | ---: | ---: |')
  for path in paths:
    with open(path) as f:
      report = json.load(f)
    reference, row = report['rows']
    delta = row['accuracy'] - reference['accuracy']
    print(f"| `{report['model']}` | {report['format']} {report['quantize']} "
          f"| {row['accuracy']:.2f}% ({reference['accuracy']:.2f}%, {delta:+.2f}) "
          f"| {row['differing_predictions']} | {row['max_abs_logit_diff']:.1e} "
          f"| {row['size_bytes']:,} "
          f"| {row['latency_us']:.0f} us ({reference['latency_us']:.0f} us) |")


if __name__ == '__main__':
  main(sys.argv[1:])

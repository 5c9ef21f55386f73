"""kqreg-benchmark: costs of QAT against float and against the peers.

  step_timing   step time against float: paired rounds, fresh processes
  measurements  callback overhead, noise cost, memory, TFLite, throughput
  peers         tfmot n-bit, QKeras and Larq adapters (build, export)
  peer_rows     the peers table: paired training and export per tool
  suite         the whole run
  report        its page and its targets
Import the module you need: this package imports nothing itself.
"""

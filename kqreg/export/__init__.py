"""Export QAT models to integer TFLite files and check them against Keras.

  writer       `export_tflite` in named steps, `set_storage`
  converter    the model the converter sees, the TFLite converter call
  flatbuffer   reading a .tflite file and re-gridding its kernels (no TF)
  exportable   what export needs from the Keras model, what it refuses
  storage      INT4 or INT8 per kernel: storage="size" | "speed" | "auto"
  file_report  the report written beside the file, read back from it
  latency      timing a file in LiteRT
  verify       running a file in LiteRT against Keras

Example:

```python
kqreg.export.check_exportable("w4a8")        # before training
qat = kqreg.quantize(model, "w4a8")
... train ...
report = kqreg.export.export_tflite(qat, "runs/w4a8/model.tflite",
                                     storage="auto")
check = kqreg.export.verify_tflite("runs/w4a8/model.tflite", qat, x_val)
```
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.export.file_report import REPORT_SUFFIX, report_summary
from kqreg.export.writer import export_tflite, set_storage
from kqreg.export.errors import ExportError
from kqreg.export.flatbuffer import inspect_tflite, regrid_weights
from kqreg.export.latency import measure_latency
from kqreg.export.storage import DEFAULT_STORAGE, STORAGES, storage_table
from kqreg.export.exportable import check_exportable, export_problems
from kqreg.export.verify import interpreter, tflite_predict, verify_tflite

__all__ = [
    "DEFAULT_STORAGE",
    "ExportError",
    "REPORT_SUFFIX",
    "check_exportable",
    "export_problems",
    "export_tflite",
    "inspect_tflite",
    "interpreter",
    "measure_latency",
    "regrid_weights",
    "report_summary",
    "set_storage",
    "STORAGES",
    "storage_table",
    "tflite_predict",
    "verify_tflite",
]

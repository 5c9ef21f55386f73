"""Export QAT models to integer TFLite files and check them against Keras.

Modules: `convert` (`export_tflite` and its steps), `converter` (the TFLite
converter call), `flatbuffer` (reading and re-gridding a .tflite file),
`model_info` (what export needs from the Keras model; `check_exportable`),
`verify` (running a file in LiteRT against Keras).

Example:

```python
kqreg.export.check_exportable("w4a8")        # before training
qat = kqreg.quantize(model, "w4a8")
... train ...
report = kqreg.export.export_tflite(qat, "runs/w4a8/model.tflite")
check = kqreg.export.verify_tflite("runs/w4a8/model.tflite", qat, x_val)
```
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.export.convert import REPORT_SUFFIX, export_tflite, report_summary
from kqreg.export.errors import ExportError
from kqreg.export.flatbuffer import inspect_tflite, regrid_weights
from kqreg.export.model_info import check_exportable, export_problems
from kqreg.export.verify import interpreter, tflite_predict, verify_tflite

__all__ = [
    "ExportError",
    "REPORT_SUFFIX",
    "check_exportable",
    "export_problems",
    "export_tflite",
    "inspect_tflite",
    "interpreter",
    "regrid_weights",
    "report_summary",
    "tflite_predict",
    "verify_tflite",
]

"""The README's API example runs and its printed error is what it claims."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    pred, ref = namespace["pred"], namespace["ref"]
    assert pred.shape == (256, 10, 1)
    # float32 model against the float32 explicit reference: a few ulps of values of order 1.
    np.testing.assert_allclose(pred[:, -1], ref, atol=1e-5)

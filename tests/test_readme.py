"""The README's examples run and give what they claim."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _examples():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs():
    code = _examples()[0]
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    pred, ref = namespace["pred"], namespace["ref"]
    assert pred.shape == (256, 10, 1)
    # float32 model against the float32 explicit reference: a few ulps of values of order 1.
    np.testing.assert_allclose(pred[:, -1], ref, atol=1e-5)


def test_readme_trainer_example_learns_its_map():
    (code,) = [c for c in _examples() if "trainer.fit" in c]
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    history = namespace["fitted"].history
    assert [row["step"] for row in history] == [0, 50, 100, 150, 200]
    # SGD on a noiseless least-squares problem: the weights reach the map to float32 precision.
    np.testing.assert_allclose(np.ravel(history[-1]["w"]), [1.5, -2.0, 0.5], atol=1e-5)


def test_readme_classification_example_gives_cross_entropy_gd():
    (code,) = [c for c in _examples() if "tasks.classification" in c]
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    logits, reference = namespace["logits"], namespace["reference"]
    # The construction's logits differ from one CE GD step's by one number per task (float32).
    shift = np.asarray(logits - reference)
    np.testing.assert_allclose(shift, shift[:, :1] * np.ones_like(shift), atol=1e-5)


def test_readme_gril_example_steps_as_it_trains():
    (code,) = [c for c in _examples() if "GRILMixer(" in c]
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    y, y_t = namespace["y"], namespace["y_t"]
    assert y.shape == (2, 100, 64)
    # float32: the chunked and the recurrent form sum the same products in another order.
    np.testing.assert_allclose(y_t, y[:, 4], atol=1e-5)


def test_readme_model_example_generates_what_the_model_predicts():
    (code,) = [c for c in _examples() if "generate(" in c]
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    model, tokens, step_logits = namespace["model"], namespace["tokens"], namespace["step_logits"]
    assert namespace["logits"].shape == (2, 25, 256) and tokens.shape == (2, 25)
    # float32: the recurrent form against the chunked one on the generated tokens.
    np.testing.assert_allclose(step_logits, model(tokens)[:, 4:24], atol=1e-4)

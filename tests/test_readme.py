"""The README's end-to-end example runs as written (its own asserts check the loss and the
gradient against the closed form)."""
import os
import re

import numpy as np

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_api_example_runs():
    text = open(README, encoding="utf-8").read()
    api = text[text.index("## API"):]
    code = re.search(r"```python\n(.*?)```", api, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md (API example)", "exec"), scope)
    assert scope["step"].rules["dW_from_T_matmul_NT"] == "matmul-tile"
    assert np.isfinite(scope["loss_value"])

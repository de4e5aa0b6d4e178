"""README's code examples run as written."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
        if "logits" in namespace:
            assert namespace["logits"].shape == (2, 64, namespace["config"].vocab_size)
            assert namespace["grads"].keys() == namespace["params"].keys()

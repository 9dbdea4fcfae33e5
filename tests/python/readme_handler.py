"""A Python Lambda handler that runs README.md's Python snippet (section "Localhost API") as written.

tests/tests/readme_examples.rs extracts the ```python block from README.md at test time and passes its path in
README_SNIPPET; each invocation executes the snippet unchanged and returns what it left in ``candles``.
"""

import os


def handler(event, context):
    path = os.environ["README_SNIPPET"]
    with open(path, encoding="utf-8") as f:
        source = f.read()
    scope = {"__name__": "readme_snippet"}
    exec(compile(source, path, "exec"), scope)
    return {"candles": scope["candles"]}

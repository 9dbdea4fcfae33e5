"""moto_server for the deploy tests, with Lambda's Invoke answered without Docker.

moto runs invoked functions in Docker, which this machine does not have. Its no-Docker mode
(`{"lambda": {"use_docker": false}}`) keeps functions and layers in a second backend whose layer lookup still
reads the first one, so a function with layers cannot be created there (moto 5.2). Instead, this keeps the normal
backend and replaces only `invoke`, which then behaves like Lambda's API for a function that echoes its event:

- an unknown function is a 404 ResourceNotFoundException, as in Lambda;
- results queued through moto's own endpoint `POST /moto-api/static/lambda-simple/response`
  (`{"results": ["..."], "region": "..."}`) are returned first, in order;
- a result shaped like a Lambda error (`{"errorMessage": ..., "errorType": ...}`) carries the
  `X-Amz-Function-Error: Unhandled` header, which the CLI reports as `FunctionError`.

    python3 tests/deploy/moto_server.py PORT
"""

import json
import sys

from moto.awslambda.models import LambdaBackend
from moto.awslambda_simple.models import lambda_simple_backends
from moto.server import main


def _invoke(self, function_name, qualifier, body, headers, response_headers):
    self.get_function(function_name, qualifier)  # raises the 404 for unknown functions
    queue = lambda_simple_backends[self.account_id][self.region_name].lambda_simple_results_queue
    result = queue.pop(0) if queue else (body or "{}")
    if isinstance(result, bytes):
        result = result.decode()
    try:
        parsed = json.loads(result)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "errorType" in parsed:
        response_headers["x-amz-function-error"] = "Unhandled"
    return result.encode()


LambdaBackend.invoke = _invoke

if __name__ == "__main__":
    main(["-H", "127.0.0.1", "-p", sys.argv[1]])

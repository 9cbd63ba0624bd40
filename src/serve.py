"""The prediction service and its web page: upload a field, see its cells and their classes.

    python src/serve.py --models models/effb2              # http://127.0.0.1:8000/ (page), /docs (API)
    python src/serve.py                                    # no trained model: cells without classes
    python src/serve.py --models models/effb2 --image-models models/effb2_image   # cells blended with an image model
    python src/serve.py --task hpa-2018 --models models/effb2_hpa-2018          # an image-level task: the field's classes
    python src/serve.py --models models/effb2 --host 0.0.0.0 --port 8080 --workers 1 --queue 8

    curl -F red=@f_red.png -F green=@f_green.png -F blue=@f_blue.png -F yellow=@f_yellow.png \
         'http://127.0.0.1:8000/predict?masks=true'

The model run is loaded once, in the background: /health answers 503 until it is ready.
Uploads stay in memory and are gone when the request ends; limits are options (--help).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellloc.config import parse_config
from cellloc.errors import exit_on_input_error
from cellloc.runtime import runtime_line
from cellloc.service import ServiceConfig, run_server
from cellloc.service_model import check_run


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ServiceConfig, argv, __doc__)
    check_run(cfg.models)
    check_run(cfg.image_models)
    print(f"cellloc service: task {cfg.task}, model {cfg.models or 'none (segmentation only)'}; "
          f"page http://{cfg.host}:{cfg.port}/, API docs http://{cfg.host}:{cfg.port}/docs", flush=True)
    if cfg.models:  # the classifier (and an hpa segmentation its recipe names) runs on it
        print(runtime_line(cfg.runtime, cfg.device), flush=True)
    run_server(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

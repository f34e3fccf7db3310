"""The clinic's web page and REST API (``neurosono serve``): FastAPI over the pipeline.

from neurosono.serve import ServeSettings, create_app
app = create_app(ServeSettings())  # an ASGI app; ``neurosono serve`` runs it with uvicorn
"""

from neurosono.serve.app import create_app
from neurosono.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]

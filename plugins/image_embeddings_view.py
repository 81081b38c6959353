"""Airflow plugin: an "Image embeddings" entry in the UI's navigation, listing days and reports."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/image-embeddings"


class AppOnFirstRequest:
    """An ASGI app that builds the view's FastAPI app when the API server first calls it.

    Every Airflow process loads the plugins; only the API server serves them, so the others never
    import FastAPI and Airflow's API modules for nothing.
    """

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from image_embeddings_airflow.ui.view import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class ImageEmbeddingsPlugin(AirflowPlugin):
    """The view's app, mounted by the API server, and its place in the navigation."""

    name = "image_embeddings"
    fastapi_apps = [
        {"app": AppOnFirstRequest(), "url_prefix": URL_PREFIX, "name": "Image embeddings"}
    ]
    external_views = [
        {
            "name": "Image embeddings",
            "href": f"{URL_PREFIX}/",
            "url_route": "image-embeddings",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]

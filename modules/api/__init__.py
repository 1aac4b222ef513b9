"""The A1111-compatible HTTP API: pydantic models (`modules.api.models`) and routes (`modules.api.api`).

`modules.api.api.Api(webui).register(app)` adds every `/sdapi/v1/*` route to a FastAPI app; the server
(`modules.webui_server`) adds the auth and body-size middleware around it.
"""

"""GET /v1/models and /v1/models/{id}: the public names this gateway serves."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.deps import authenticate, json_response, services_of
from gateway.api.schemas import ERRORS, ModelList, ModelObject
from gateway.config import Catalog
from gateway.config import Route as ModelRoute
from gateway.errors import ModelNotFoundError

CREATED = 1_700_000_000  # a fixed timestamp: the config has no creation date


def model_object(route: ModelRoute, catalog: Catalog) -> dict[str, object]:
    deployments = catalog.deployments_of(route)
    simulated = all(d.simulated for d in deployments)
    return {
        "id": route.name,
        "object": "model",
        "created": CREATED,
        "owned_by": "gateway-simulated" if simulated else "gateway",
        "gateway": {
            "policy": route.policy,
            "mode": route.mode,
            "simulated": simulated,
            "deployments": [d.id for d in deployments],
        },
    }


router = APIRouter(tags=["models"], responses=ERRORS)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> Response:
    """The public model names (routes) the caller's key may use."""
    caller = authenticate(request)
    catalog = services_of(request).catalog
    data = [
        model_object(route, catalog)
        for route in catalog.routes.values()
        if caller.routes is None or route.name in caller.routes
    ]
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}", response_model=ModelObject)
async def retrieve_model(request: Request, model_id: str) -> Response:
    caller = authenticate(request)
    catalog = services_of(request).catalog
    route = catalog.routes.get(model_id)
    if route is None or (caller.routes is not None and model_id not in caller.routes):
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
    return json_response(model_object(route, catalog))

"""Folders: the tree certificates live in."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from api.deps import CW, Context, require
from api.schemas import CreateFolderRequest
from domain.folder import normalise_folder
from domain.principal import Role

router = APIRouter(prefix="/api/v1/orgs/{org}/folders", tags=["folders"])


@router.get("")
def folder_tree(org: str, cw: CW, ctx: Context) -> dict[str, Any]:
    require(ctx, org, Role.VIEWER)
    return {"items": cw.catalogue.folders(org)}


@router.post("", status_code=status.HTTP_201_CREATED)
def create_folder(org: str, body: CreateFolderRequest, cw: CW, ctx: Context) -> dict[str, str]:
    require(ctx, org, Role.ADMIN)
    path = cw.registry.create_folder(org, body.path, ctx.actor)
    cw.sync()
    return {"path": path}


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
def delete_folder(org: str, path: str, cw: CW, ctx: Context) -> None:
    require(ctx, org, Role.ADMIN)
    items, _ = cw.catalogue.list_certificates(org, folder=normalise_folder(path), limit=1)
    cw.registry.delete_folder(org, path, ctx.actor, in_use=len(items))
    cw.sync()

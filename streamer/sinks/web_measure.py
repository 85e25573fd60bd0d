"""Measuring on the page (streamer/sinks/web.py): the distance under the pointer, between two points,
and the calibration click ("this point is D metres away") that scales every metre after it.

Everything reads the newest frame's millimetres, as `/depth.png` serves them, so the page's readout
and a script reading `/depth.png` agree. Points are in pixels of the served picture; in the
side-by-side view the depth is the right half and either half's pixel names the same point.
"""

from __future__ import annotations

import cv2

import json
import math

import numpy as np
from aiohttp import web

from streamer.calibration import intrinsics, point_3d
from streamer.effect_settings import change
from streamer.errors import ConfigError
from streamer.legend import colormap_colors, legend_picture
from streamer.types import METRIC16_SCALE
from streamer.views import side_by_side


def pixel(query, picture: np.ndarray | None, depth: np.ndarray, suffix: str = "") -> tuple[int, int]:
    """The depth pixel a page pixel `x{suffix}`, `y{suffix}` names (side-by-side: either half)."""
    try:
        x, y = int(float(query[f"x{suffix}"])), int(float(query[f"y{suffix}"]))
    except (KeyError, ValueError, TypeError):
        raise http_error(web.HTTPBadRequest, f"give x{suffix} and y{suffix} as pixel numbers") from None
    h, w = depth.shape
    if side_by_side(picture, depth):
        x %= w
    if not (0 <= x < w and 0 <= y < h):
        raise http_error(web.HTTPBadRequest, f"pixel {x},{y} lies outside the {w}x{h} picture")
    return x, y


def http_error(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json")


class Measure:
    """The `/measure` and `/calibrate` handlers of one WebApp."""

    def __init__(self, app) -> None:
        self.app = app

    def newest_depth(self) -> np.ndarray:
        depth = self.app.frames.array("depth")
        if depth is None:
            raise http_error(web.HTTPServiceUnavailable, "no depth yet")
        return depth

    def point(self, query, depth: np.ndarray, suffix: str = "") -> dict:
        x, y = pixel(query, self.app.frames.array("png"), depth, suffix)
        metres = float(depth[y, x]) * METRIC16_SCALE
        h, w = depth.shape
        sink = self.app.sink
        xyz = point_3d(x, y, metres, intrinsics(sink.meta, w, h, sink.source_width))
        return {"x": x, "y": y, "metres": metres if depth[y, x] else None, "xyz": xyz}

    async def measure(self, request: web.Request) -> web.Response:
        """GET ?x=&y=: the point's metres and 3D position; with &x2=&y2=: the distance between the two."""
        depth = self.newest_depth()
        out = {"points": [self.point(request.query, depth)]}
        if "x2" in request.query:
            out["points"].append(self.point(request.query, depth, "2"))
            a, b = (p["xyz"] for p in out["points"])
            valid = all(p["metres"] for p in out["points"])
            out["distance"] = math.dist(a, b) if valid else None
        return web.json_response({**out, **self.calibration()})

    async def calibrate(self, request: web.Request) -> web.Response:
        """POST {x, y, metres}: the point there truly lies `metres` away; every later metre is scaled."""
        from streamer.sinks.web_app import read_body  # the app's own body reader (it imports this module)

        body = {**request.query, **(await read_body(request) if request.body_exists else {})}
        calibration = self.app.sink.calibration
        if calibration is None:
            raise http_error(web.HTTPConflict, "this server does not calibrate (no run behind it)")
        depth = self.newest_depth()
        point = self.point(body, depth)
        try:
            metres = float(body["metres"])
        except (KeyError, ValueError, TypeError):
            raise http_error(web.HTTPBadRequest, "give metres: the true distance of the point") from None
        if not (point["metres"] and metres > 0 and math.isfinite(metres)):
            raise http_error(web.HTTPBadRequest, "need a point with depth and metres above 0")
        calibration.calibrate(point["metres"], metres)
        return web.json_response({"point": point, **self.calibration()})

    async def legend(self, request: web.Request) -> web.Response:
        """GET ?width=: the colour bar with metre ticks of the picture now shown (404: it shows no metres)."""
        sink = self.app.sink
        span = sink.range
        if span is None or not np.isfinite(span).all():
            raise http_error(web.HTTPNotFound, f"the {sink.picture.view} view shows no metres")
        try:
            width = min(2048, max(120, int(request.query.get("width", 480))))
        except ValueError:
            raise http_error(web.HTTPBadRequest, "width must be a number of pixels") from None
        colors = colormap_colors(sink.picture.colormap, sink.picture.view == "gray")
        plate = legend_picture(colors, round(float(span[0]), 2), round(float(span[1]), 2), width)
        ok, png = cv2.imencode(".png", cv2.cvtColor(plate, cv2.COLOR_RGBA2BGRA))
        return web.Response(body=png.tobytes(), content_type="image/png")

    async def effects(self, request: web.Request) -> web.Response:
        """POST keep / background / focus / aperture (query, JSON or form): the keyed view's settings,
        all valid or none applied; the renderer reads the new set from the next batch on."""
        from streamer.sinks.web_app import read_body

        changes = {k: v for k, v in request.query.items() if k != "token"}
        if request.body_exists:
            changes.update(await read_body(request))
        try:
            self.app.sink.picture.update(effects=change(self.app.sink.picture.effects, changes))
        except ConfigError as exc:
            raise http_error(web.HTTPBadRequest, exc.one_line()) from None
        return web.json_response({"effects": self.described()})

    def described(self) -> dict:
        e = self.app.sink.picture.effects
        return {"keep": f"{e.near:g}:{e.far:g}", "background": e.background, "focus": e.focus, "aperture": e.aperture}

    def calibration(self) -> dict:
        calibration = self.app.sink.calibration
        return calibration.describe() if calibration is not None else {"scale": 1.0, "scale_source": "none"}

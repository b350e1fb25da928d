"""Drawing a scene as a top-down camera frame with OpenCV.

Every kind has its own shape and colour, and switched-on appliances glow, so presence, state and
contact are visible at 112 px, where a 4x4 grid makes each cell one 28 px merged image token of
Qwen2.5-VL. Drawing happens at a multiple of the output size and is downscaled with area
averaging (cheap anti-aliasing); the camera (shift, rotation, zoom, perspective) and the light
(brightness, colour cast, a lamp-side gradient, sensor noise) vary per image.

Pure function of (scene, config, rng): the same inputs give the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from guard._deps import require
from guard.world.config import WorldConfig
from guard.world.scene import Obj, Scene

cv2 = require("cv2", "the synthetic world")

Color = tuple[int, int, int]  # RGB
Draw = Callable[["_Pen", float, float, float, bool], None]

# floor looks: (base, grid line, pattern) in RGB
_FLOORS: tuple[tuple[Color, Color, str], ...] = (
    ((222, 210, 185), (196, 184, 160), "tiles"),
    ((205, 205, 210), (178, 178, 186), "tiles"),
    ((196, 160, 118), (170, 134, 94), "planks"),
    ((184, 196, 204), (160, 172, 182), "plain"),
)


class _Pen:
    """Integer-rounding wrappers over cv2 drawing, with a thickness unit for the canvas size."""

    def __init__(self, img: np.ndarray, unit: float, aa: bool):
        self.img = img
        self.t = max(1, round(unit * 0.035))
        self.line_type = cv2.LINE_AA if aa else cv2.LINE_8

    def rect(self, x: float, y: float, w: float, h: float, color: Color, th: int = -1) -> None:
        cv2.rectangle(self.img, (round(x - w / 2), round(y - h / 2)),
                      (round(x + w / 2), round(y + h / 2)), color, th, self.line_type)

    def circle(self, x: float, y: float, r: float, color: Color, th: int = -1) -> None:
        cv2.circle(self.img, (round(x), round(y)), max(1, round(r)), color, th, self.line_type)

    def ellipse(self, x: float, y: float, ax: float, ay: float, color: Color, th: int = -1,
                angle: float = 0.0) -> None:
        cv2.ellipse(self.img, (round(x), round(y)), (max(1, round(ax)), max(1, round(ay))),
                    angle, 0, 360, color, th, self.line_type)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color, th: int) -> None:
        cv2.line(self.img, (round(x0), round(y0)), (round(x1), round(y1)), color, max(1, th),
                 self.line_type)

    def poly(self, pts: list[tuple[float, float]], color: Color) -> None:
        arr = np.array([[round(px), round(py)] for px, py in pts], dtype=np.int32)
        cv2.fillPoly(self.img, [arr], color, self.line_type)


# ---- anchors (s = side of the fixture) ---------------------------------------------------------

def _stove(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s, s, (62, 62, 66))
    p.rect(x, y, s, s, (32, 32, 35), p.t * 2)
    for dx in (-0.24, 0.24):
        for dy in (-0.24, 0.24):
            bx, by = x + dx * s, y + dy * s
            if on:
                p.circle(bx, by, s * 0.17, (255, 120, 20))
                p.circle(bx, by, s * 0.17, (230, 30, 0), p.t * 2)
                p.circle(bx, by, s * 0.06, (255, 225, 100))
            else:
                p.circle(bx, by, s * 0.17, (92, 92, 96))
                p.circle(bx, by, s * 0.17, (22, 22, 22), p.t * 2)


def _hot_plate(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    w = s * 0.86
    p.rect(x, y, w, w, (200, 200, 194))
    p.rect(x, y, w, w, (120, 120, 114), p.t * 2)
    p.rect(x, y + w * 0.4, w * 0.5, w * 0.08, (60, 60, 60))  # knob strip
    if on:
        p.circle(x, y - w * 0.04, w * 0.32, (255, 150, 40))
        p.circle(x, y - w * 0.04, w * 0.32, (235, 50, 0), p.t * 3)
    else:
        p.circle(x, y - w * 0.04, w * 0.32, (112, 112, 112))
        p.circle(x, y - w * 0.04, w * 0.32, (55, 55, 55), p.t * 3)


def _sink(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s, s, (166, 176, 188))
    p.rect(x, y + s * 0.08, s * 0.78, s * 0.68, (102, 118, 134))
    p.circle(x, y - s * 0.4, s * 0.07, (225, 225, 232))
    p.line(x, y - s * 0.4, x, y - s * 0.22, (225, 225, 232), p.t * 2)


def _bathtub(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s, s, (246, 246, 246))
    p.rect(x, y, s, s, (150, 150, 150), p.t * 2)
    p.ellipse(x, y, s * 0.38, s * 0.42, (160, 210, 240))
    p.circle(x, y + s * 0.3, s * 0.04, (90, 90, 90))


def _microwave(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s, s * 0.86, (46, 46, 46))
    p.rect(x - s * 0.13, y, s * 0.6, s * 0.62, (72, 98, 88))
    p.rect(x + s * 0.34, y, s * 0.2, s * 0.62, (172, 172, 172))
    for k in range(3):
        p.circle(x + s * 0.34, y - s * 0.18 + k * s * 0.18, s * 0.035, (60, 60, 60))


def _table(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    w = s * 0.92
    p.rect(x, y, w, w, (150, 100, 55))
    p.rect(x, y, w, w, (98, 62, 32), p.t * 2)
    for k in (-0.2, 0.2):
        p.line(x - w * 0.45, y + k * w, x + w * 0.45, y + k * w, (132, 86, 46), p.t)


def _laptop(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    w, h = s * 0.9, s * 0.72
    p.rect(x, y, w, h, (98, 98, 108))
    p.rect(x, y - h * 0.38, w, h * 0.24, (26, 32, 76))
    for r in range(3):
        for c in range(5):
            p.rect(x - w * 0.36 + c * w * 0.18, y - h * 0.05 + r * h * 0.16,
                   w * 0.12, h * 0.1, (58, 58, 68))


# ---- items (s = nominal item size, about half a cell) ----------------------------------------

def _towel(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s, s * 0.72, (212, 30, 52))
    for k in (-0.3, 0.3):
        p.rect(x + k * s, y, s * 0.1, s * 0.72, (250, 240, 240))


def _paper(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s * 0.8, s, (246, 246, 240))
    p.rect(x, y, s * 0.8, s, (150, 150, 150), p.t)
    for k in (-0.25, 0.0, 0.25):
        p.line(x - s * 0.28, y + k * s, x + s * 0.28, y + k * s, (110, 110, 110), p.t * 2)


def _box(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s * 0.9, s * 0.9, (192, 142, 80))
    p.rect(x, y, s * 0.9, s * 0.9, (120, 80, 38), p.t)
    p.rect(x, y, s * 0.9, s * 0.16, (232, 208, 156))


def _pan(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    # a light rim and handle around a dark inside: visible on a dark stove as well as a light floor
    p.line(x + s * 0.3, y, x + s * 0.76, y, (150, 150, 158), round(s * 0.14))
    p.circle(x, y, s * 0.4, (168, 168, 176))
    p.circle(x, y, s * 0.3, (30, 30, 32))


def _book(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s * 0.7, s * 0.9, (36, 66, 150))
    p.rect(x + s * 0.3, y, s * 0.1, s * 0.9, (236, 232, 214))  # the pages' edge


def _basket(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.circle(x, y, s * 0.42, (214, 172, 64))
    for k in (-0.2, 0.0, 0.2):
        p.line(x - s * 0.3, y + k * s, x + s * 0.3, y + k * s, (150, 106, 30), p.t)


def _kettle(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.line(x + s * 0.2, y - s * 0.1, x + s * 0.5, y - s * 0.3, (24, 110, 110), round(s * 0.1))
    p.circle(x, y, s * 0.36, (34, 150, 146))
    p.rect(x, y - s * 0.05, s * 0.36, s * 0.08, (20, 70, 70))  # the handle across the lid


def _wok(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.line(x - s * 0.76, y, x - s * 0.3, y, (110, 72, 40), round(s * 0.12))
    p.circle(x, y, s * 0.42, (70, 70, 78))
    p.circle(x, y, s * 0.18, (110, 110, 120))


def _pot(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    for k in (-1, 1):
        p.rect(x + k * s * 0.44, y, s * 0.16, s * 0.2, (90, 90, 100))
    p.circle(x, y, s * 0.4, (176, 182, 190))
    p.circle(x, y, s * 0.4, (108, 108, 118), p.t * 2)


def _mug(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.circle(x + s * 0.3, y, s * 0.13, (20, 150, 150), p.t * 3)
    p.circle(x, y, s * 0.3, (20, 160, 160))
    p.circle(x, y, s * 0.19, (10, 88, 88))


def _plate(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.circle(x, y, s * 0.45, (250, 250, 250))
    p.circle(x, y, s * 0.45, (180, 180, 180), p.t)
    p.circle(x, y, s * 0.28, (210, 210, 210), p.t)


def _duck(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.ellipse(x - s * 0.05, y + s * 0.06, s * 0.34, s * 0.24, (250, 214, 30))
    p.circle(x + s * 0.2, y - s * 0.14, s * 0.16, (250, 214, 30))
    p.poly([(x + s * 0.34, y - s * 0.18), (x + s * 0.5, y - s * 0.12),
            (x + s * 0.34, y - s * 0.06)], (255, 120, 0))


def _toaster(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s * 0.86, s * 0.62, (206, 206, 212))
    p.rect(x, y, s * 0.86, s * 0.62, (118, 118, 124), p.t)
    for k in (-0.12, 0.12):
        p.rect(x - s * 0.04, y + k * s, s * 0.56, s * 0.09, (20, 20, 20))
    p.circle(x + s * 0.34, y, s * 0.06, (220, 30, 30))


def _hair_dryer(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x + s * 0.08, y + s * 0.22, s * 0.18, s * 0.44, (196, 66, 128))
    p.rect(x - s * 0.3, y - s * 0.12, s * 0.3, s * 0.2, (40, 40, 40))
    p.circle(x + s * 0.06, y - s * 0.12, s * 0.24, (232, 100, 162))


def _fork(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    c = (150, 150, 162)
    p.rect(x, y + s * 0.22, s * 0.14, s * 0.5, c)
    p.rect(x, y - s * 0.06, s * 0.42, s * 0.12, c)
    for k in (-0.16, 0.0, 0.16):
        p.rect(x + k * s, y - s * 0.26, s * 0.09, s * 0.32, c)


def _foil(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    pts = [(-0.42, -0.3), (-0.1, -0.44), (0.3, -0.36), (0.44, 0.02), (0.34, 0.38),
           (-0.06, 0.44), (-0.4, 0.28), (-0.46, -0.02)]
    p.poly([(x + a * s, y + b * s) for a, b in pts], (214, 220, 228))
    p.line(x - s * 0.3, y - s * 0.2, x + s * 0.25, y + s * 0.25, (250, 250, 255), p.t * 2)
    p.line(x - s * 0.2, y + s * 0.3, x + s * 0.3, y - s * 0.2, (150, 156, 168), p.t * 2)


def _knife(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.poly([(x - s * 0.12, y - s * 0.1), (x + s * 0.5, y - s * 0.02),
            (x - s * 0.12, y + s * 0.1)], (206, 212, 218))
    p.rect(x - s * 0.3, y, s * 0.36, s * 0.16, (28, 28, 28))


def _glass(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.circle(x, y, s * 0.3, (186, 232, 252))
    p.circle(x, y, s * 0.3, (96, 160, 200), p.t * 2)
    p.circle(x - s * 0.1, y - s * 0.1, s * 0.06, (255, 255, 255))


def _vase(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.circle(x, y, s * 0.36, (150, 40, 40))
    p.circle(x, y, s * 0.36, (86, 18, 18), p.t)
    p.circle(x, y, s * 0.15, (44, 8, 8))


def _rug(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.rect(x, y, s * 1.2, s * 0.6, (132, 122, 60))
    p.rect(x, y, s * 0.9, s * 0.36, (170, 160, 92), p.t * 2)


def _plant(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    for k in range(5):
        a = k * 2 * math.pi / 5
        p.circle(x + math.cos(a) * s * 0.24, y + math.sin(a) * s * 0.24, s * 0.17, (34, 140, 44))
    p.circle(x, y, s * 0.15, (140, 82, 40))


def _ball(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.circle(x, y, s * 0.3, (112, 62, 222))
    p.line(x - s * 0.25, y - s * 0.1, x + s * 0.25, y + s * 0.1, (245, 245, 245), p.t * 2)


def _person(shirt: Color, hair: Color) -> Draw:
    def draw(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
        p.ellipse(x, y + s * 0.08, s * 0.44, s * 0.26, shirt)
        p.circle(x, y - s * 0.02, s * 0.2, hair)
        p.circle(x, y + s * 0.02, s * 0.15, (240, 192, 152))

    return draw


def _cat(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    c = (232, 132, 40)
    p.line(x + s * 0.3, y, x + s * 0.5, y - s * 0.22, c, round(s * 0.08))
    p.ellipse(x + s * 0.05, y, s * 0.32, s * 0.19, c)
    hx = x - s * 0.28
    p.poly([(hx - s * 0.14, y - s * 0.08), (hx - s * 0.1, y - s * 0.3), (hx, y - s * 0.12)], c)
    p.poly([(hx + s * 0.14, y - s * 0.08), (hx + s * 0.1, y - s * 0.3), (hx, y - s * 0.12)], c)
    p.circle(hx, y, s * 0.15, c)
    p.circle(hx - s * 0.06, y - s * 0.02, s * 0.03, (20, 20, 20))
    p.circle(hx + s * 0.06, y - s * 0.02, s * 0.03, (20, 20, 20))


def _robot(p: _Pen, x: float, y: float, s: float, on: bool) -> None:
    p.circle(x, y, s * 0.34, (30, 110, 230))
    p.circle(x, y, s * 0.34, (14, 58, 140), p.t * 2)
    p.poly([(x, y - s * 0.24), (x + s * 0.16, y + s * 0.12), (x - s * 0.16, y + s * 0.12)],
           (250, 250, 250))


#: kind -> (draw function, size as a share of the cell's short side)
DRAW: dict[str, tuple[Draw, float]] = {
    "stove": (_stove, 0.88), "hot_plate": (_hot_plate, 0.88), "sink": (_sink, 0.88),
    "bathtub": (_bathtub, 0.9), "microwave": (_microwave, 0.88), "table": (_table, 0.9),
    "laptop": (_laptop, 0.88),
    "towel": (_towel, 0.52), "paper": (_paper, 0.5), "box": (_box, 0.5), "pan": (_pan, 0.5),
    "pot": (_pot, 0.5), "book": (_book, 0.5), "basket": (_basket, 0.5),
    "kettle": (_kettle, 0.5), "wok": (_wok, 0.5), "mug": (_mug, 0.5), "plate": (_plate, 0.5),
    "duck": (_duck, 0.5),
    "toaster": (_toaster, 0.52), "hair_dryer": (_hair_dryer, 0.52), "fork": (_fork, 0.5),
    "foil": (_foil, 0.5), "knife": (_knife, 0.6), "glass": (_glass, 0.5), "vase": (_vase, 0.5),
    "rug": (_rug, 0.6), "plant": (_plant, 0.55), "ball": (_ball, 0.45),
    "child": (_person((255, 200, 0), (110, 70, 30)), 0.55),
    "adult": (_person((40, 122, 62), (40, 30, 20)), 0.8),
    "cat": (_cat, 0.6), "robot": (_robot, 0.6),
}

_LAYER_ORDER = {"anchor": 0, "item": 1, "robot": 2}
_TRAY: Color = (210, 236, 222)  # `item_on_anchor: tray`: a pale green no floor has


def supersample_for(config: WorldConfig) -> int:
    """Drawing scale: 4x for small images, less for big ones (the canvas stays near 450 px)."""
    if config.supersample is not None:
        return config.supersample
    return max(1, min(4, round(448 / max(config.width, config.height))))


def render(scene: Scene, config: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw `scene` as seen by a ceiling camera.

    Args:
        scene: What to draw.
        config: Image size, supersampling and appearance.
        rng: The only source of visual randomness (object jitter, camera, light, noise).

    Returns:
        An RGB uint8 array of shape (config.height, config.width, 3).
    """
    ap = config.appearance
    ss = supersample_for(config)
    W, H = config.width * ss, config.height * ss
    cw, ch = W / scene.cols, H / scene.rows
    unit = min(cw, ch)

    base, grid_c, pattern = _FLOORS[int(rng.integers(ap.floor_styles))]
    img = np.empty((H, W, 3), np.uint8)
    pen = _Pen(img, unit, aa=ss < 2)
    pen.rect(W / 2, H / 2, W + 2, H + 2, base)  # 20x faster than numpy's broadcast fill
    if pattern == "planks":
        for k in range(1, scene.rows * 3):
            pen.line(0, k * ch / 3, W, k * ch / 3, grid_c, pen.t)
    # cell borders are always visible: they tell a model where one cell (token) ends
    for r in range(1, scene.rows):
        pen.line(0, r * ch, W, r * ch, grid_c, pen.t * 2)
    for c in range(1, scene.cols):
        pen.line(c * cw, 0, c * cw, H, grid_c, pen.t * 2)

    robot_cell = scene.robot_cell
    for obj in sorted(scene.objects, key=lambda o: _LAYER_ORDER[o.layer]):
        _draw_obj(pen, obj, scene, robot_cell, cw, ch, unit, rng, ap.scale_jitter,
                  ap.offset_jitter,
                  tray=ap.tray_item_scale if ap.item_on_anchor == "tray" else None)

    if ss > 1:
        img = cv2.resize(img, (config.width, config.height), interpolation=cv2.INTER_AREA)
    # the camera moves after downscaling: 16x fewer pixels to warp, and the bilinear blur of
    # a sub-pixel warp is what a real lens does anyway
    img = _camera(img, rng, config)
    return _light(img, rng, config)


def _draw_obj(pen: _Pen, obj: Obj, scene: Scene, robot_cell: tuple[int, int] | None,
              cw: float, ch: float, unit: float, rng: np.random.Generator,
              scale_jitter: float, offset_jitter: float, tray: float | None = None) -> None:
    draw, share = DRAW[obj.kind]
    # draw every random number whether or not it is used: the stream stays aligned
    jit = rng.uniform(-1.0, 1.0, 3)
    r, c = obj.cell
    x, y = (c + 0.5) * cw, (r + 0.5) * ch
    if obj.layer == "anchor":
        size = unit * share * (1 + jit[0] * scale_jitter / 3)
    else:
        size = unit * share * (1 + jit[0] * scale_jitter)
        x += jit[1] * offset_jitter * unit
        y += jit[2] * offset_jitter * unit
    if robot_cell == obj.cell and scene.item(obj.cell) is not None:
        # robot in the lower half, the thing in its way in the upper half (it faces up)
        size *= 0.8
        y = (r + 0.5) * ch + (0.22 if obj.layer == "robot" else -0.2) * unit
        x = (c + 0.5) * cw
    if tray is not None and obj.layer == "item" and scene.anchor(obj.cell) is not None:
        # the cell's top-left quarter, hidden under a plain tray, holds the item at `tray`
        # times its size
        x, y = (c + 0.25) * cw, (r + 0.25) * ch
        pen.rect(x, y, cw / 2, ch / 2, _TRAY)
        size *= tray
    draw(pen, x, y, size, obj.on)


def _camera(img: np.ndarray, rng: np.random.Generator, config: WorldConfig) -> np.ndarray:
    ap = config.appearance
    u = rng.uniform(-1.0, 1.0, 12)
    if not (ap.camera_shift or ap.camera_rotate_deg or ap.camera_zoom or ap.camera_perspective):
        return img
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), u[0] * ap.camera_rotate_deg,
                                1.0 + u[1] * ap.camera_zoom)
    m[0, 2] += u[2] * ap.camera_shift * w
    m[1, 2] += u[3] * ap.camera_shift * h
    mat = np.vstack([m, [0.0, 0.0, 1.0]])
    if ap.camera_perspective:
        src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
        dst = src + (u[4:12].reshape(4, 2) * ap.camera_perspective * np.array([w, h])).astype(
            np.float32
        )
        mat = cv2.getPerspectiveTransform(src, dst) @ mat
    warped: np.ndarray = cv2.warpPerspective(img, mat, (w, h), flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_REPLICATE)
    return warped


def _light(img: np.ndarray, rng: np.random.Generator, config: WorldConfig) -> np.ndarray:
    ap = config.appearance
    u = rng.uniform(-1.0, 1.0, 6)
    noise_seed = int(rng.integers(2**31))
    if not (ap.lighting or ap.color_cast or ap.light_gradient or ap.noise):
        return img
    h, w = img.shape[:2]
    gain = ((1.0 + u[0] * ap.lighting) * (1.0 + u[1:4] * ap.color_cast)).astype(np.float32)
    angle = u[4] * math.pi
    xs = (np.arange(w, dtype=np.float32) / w - 0.5) * (2.0 * math.cos(angle))
    ys = (np.arange(h, dtype=np.float32) / h - 0.5) * (2.0 * math.sin(angle))
    shade = 1.0 + (ys[:, None] + xs[None, :]) * np.float32(ap.light_gradient * abs(u[5]))
    out = img.astype(np.float32)
    out *= shade[..., None]
    out *= gain
    if ap.noise:
        # triangular noise (sum of two uniforms) with the asked std: 3x cheaper than normal
        nrng = np.random.default_rng(noise_seed)
        tri = nrng.random(out.shape, dtype=np.float32) + nrng.random(out.shape, dtype=np.float32)
        out += (tri - 1.0) * np.float32(ap.noise * math.sqrt(6.0))
    out += 0.5
    return np.clip(out, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """PNG bytes of an RGB image.

    Deterministic for a given OpenCV/zlib build: same pixels, same bytes. (Another zlib may
    compress differently; the decoded pixels are the same everywhere.) Level 1 with run-length
    matching is the fastest setting that still halves the size of a noisy frame.
    """
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]),
                           [cv2.IMWRITE_PNG_COMPRESSION, compression,
                            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    png: bytes = buf.tobytes()
    return png

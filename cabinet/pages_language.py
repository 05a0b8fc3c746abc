"""The language switch: a cookie, and back to the page the visitor was on."""

import re

from aiohttp import web

from cabinet.i18n import LANGUAGE_COOKIE, LANGUAGES
from cabinet.web import cabinet, redirect

# Only a path of this site: "//host" or "/\\host" would send the visitor elsewhere.
LOCAL_PATH = re.compile(r"/(?![/\\])[^\s\\]{0,2000}")
YEAR = 365 * 24 * 3600


async def choose(request: web.Request) -> web.Response:
    language = request.match_info["language"]
    if language not in LANGUAGES:
        raise web.HTTPNotFound()
    back = request.query.get("next", "/")
    response = redirect(back if LOCAL_PATH.fullmatch(back) else "/")
    response.set_cookie(
        LANGUAGE_COOKIE,
        language,
        max_age=YEAR,
        httponly=True,
        samesite="Lax",
        secure=cabinet(request).settings.secure_cookie,
        path="/",
    )
    return response

"""An organization signs itself up in the cabinet: its IIN/BIN, title and main user, held until
the person confirms with the one-time code sent to the phone and e-mail they gave.

Step one (`start`) checks everything the second step could refuse (the IIN/BIN's form and that no
organization has it, the login's form and that it is free, the password's length), hashes the
password, and keeps the lot under a one-time code (ledger/cabinet_codes), so the password never
rests in the clear. Step two (`confirm`) makes the organization and its main user in one
transaction, audited as "cabinet-signup:<login>". Registration with the KGD is the registers'
affair (their applications, ledger/kgd); proving the taxpayer's identity by digital signature
(ЭЦП) is out of scope, as the issue says.
"""

import re
from dataclasses import asdict, dataclass
from datetime import timedelta

from ledger import cabinet_codes, cabinet_users, registry
from ledger.cabinet_users import User
from ledger.errors import AlreadyExists, InvalidRequest
from ledger.state_store import Conn

PURPOSE = "signup"
IIN = re.compile(r"[0-9]{12}")
MAX_TITLE = 200
CODE_LIFETIME = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class SignUp:
    iin: str
    title: str
    address: str
    login: str
    name: str
    email: str
    phone: str


@dataclass(frozen=True, slots=True)
class Started:
    ticket: str  # back to the browser
    code: str  # to the person's phone and e-mail only


def _check(form: SignUp) -> None:
    if not IIN.fullmatch(form.iin):
        raise InvalidRequest("an IIN or BIN is 12 digits")
    if not form.title or len(form.title) > MAX_TITLE or len(form.address) > MAX_TITLE:
        raise InvalidRequest(f"a title is 1 to {MAX_TITLE} characters, an address at most as many")
    if not form.phone and not form.email:
        raise InvalidRequest("a phone or an e-mail is needed to send the confirmation code to")
    cabinet_users.check_new_user(form.login, form.name, form.email, form.phone, "")


async def _check_free(conn: Conn, form: SignUp) -> None:
    if await registry.list_organizations(conn, iin=form.iin, limit=1):
        raise AlreadyExists(
            "an organization with this IIN/BIN is already registered: its main user can add you"
        )
    if await cabinet_users.find_login(conn, form.login) is not None:
        raise AlreadyExists("this login is taken")


async def start(conn: Conn, form: SignUp, password: str) -> Started:
    _check(form)
    await _check_free(conn, form)
    password_hash = await cabinet_users.new_password_hash(password)
    issued = await cabinet_codes.issue(
        conn, PURPOSE, {**asdict(form), "password_hash": password_hash}, CODE_LIFETIME
    )
    return Started(issued.ticket, issued.code)


async def confirm(conn: Conn, ticket: str, code: str) -> User:
    """The organization and its main user, made once for the right code."""
    held = await cabinet_codes.redeem(conn, PURPOSE, ticket, code)
    password_hash = held.pop("password_hash")
    form = SignUp(**held)
    async with conn.transaction():
        # Checked again: someone may have taken the IIN/BIN or the login in the meantime.
        await _check_free(conn, form)
        org = await registry.add_organization(
            conn, registry.Organization(0, form.iin, form.title, form.address, "", "")
        )
        user = await cabinet_users.insert_user(
            conn,
            org.id,
            login=form.login,
            password_hash=password_hash,
            name=form.name,
            email=form.email,
            phone=form.phone,
            position="",
            is_main=True,
        )
        await registry.audit(
            conn, f"cabinet-signup:{form.login}", "SignUp", None, id=org.id, iin=form.iin
        )
    return user

"""The directory (annuaire): who may use clinical commands, and who can be asked for what."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.markup import literal
from domain.permissions import holds_role
from domain.rules_yaml import load_rules
from domain.text import normalize
from storage.models import Professional, RoomRecord

DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class Profession:
    code: str
    libelle: str
    pluriel: str
    aliases: tuple[str, ...]


@lru_cache
def professions() -> dict[str, Profession]:
    raw = load_rules((DATA / "professions.yaml").read_text(encoding="utf-8"))
    return {code: Profession(code, v["libelle"], v["pluriel"], tuple(v.get("aliases", ()))) for code, v in raw.items()}


def find_profession(text: str) -> Profession | None:
    key = normalize(text).replace("-", " ").replace("_", " ")
    for p in professions().values():
        names = (p.code, p.libelle, p.pluriel, *p.aliases)
        if key in {normalize(n).replace("-", " ").replace("_", " ") for n in names}:
            return p
    return None


def profession_label(code: str, *, pluriel: bool = False) -> str:
    p = professions().get(code)
    return (p.pluriel if pluriel else p.libelle) if p else code


def has_role(prof: Professional, role: str) -> bool:
    return holds_role(prof.roles, role)


async def names(session: AsyncSession, users) -> dict[str, str]:
    """Display names from the directory, marked as literal text (shown as typed); the id otherwise."""
    out = {}
    for u in users:
        if u:
            prof = await session.get(Professional, u)
            out[u] = literal(prof.display_name) if prof else u
    return out


async def resolve_person(ctx, ref: str) -> Professional:
    """A directory member from an @id or a name; refuses (French) when none or several match."""
    try:
        found = await ctx.services.directory.search(ctx.session, ref)
    except ValueError as e:
        ctx.refuse(f"« {literal(ref)} » : {e}")
    if not found:
        ctx.refuse(f"personne dans l'annuaire ne correspond à « {literal(ref)} »")
    if len(found) > 1:
        names = "\n".join(f"- {literal(p.display_name)} ({profession_label(p.profession)}) : `{p.user_id}`" for p in found[:10])
        ctx.refuse(f"plusieurs professionnels correspondent à « {literal(ref)} » ; précisez avec l'identifiant :\n{names}",
                   usage=False)
    return found[0]


async def direct_room_of(session: AsyncSession, user_id: str) -> str | None:
    """The user's direct chat with the bot, if there is one yet."""
    return await session.scalar(select(RoomRecord.room_id).where(
        RoomRecord.kind == "direct", RoomRecord.direct_with == user_id))


class Directory:
    """The annuaire's queries; only active professionals count."""

    async def get(self, session: AsyncSession, user_id: str) -> Professional | None:
        prof = await session.get(Professional, user_id)
        return prof if prof is not None and prof.active else None

    async def refusal(self, session: AsyncSession, user_id: str, requires: str) -> str | None:
        """A polite French refusal, or None when `user_id` may use a command needing `requires`."""
        prof = await self.get(session, user_id)
        if prof is None:
            # Nothing about the CPTS or its members to someone outside it (issue 8).
            return "🙏 Accès réservé. Rien n'a été fait."
        if requires == "coordinateur" and not has_role(prof, "coordinateur"):
            return "🙏 Cette commande est réservée aux coordinateurs de la CPTS. Rien n'a été fait."
        return None

    async def accepts_invite_from(self, session: AsyncSession, user_id: str) -> bool:
        return await self.get(session, user_id) is not None

    async def members(self, session: AsyncSession, profession: str | None = None,
                      commune: str | None = None) -> list[Professional]:
        stmt = select(Professional).where(Professional.active.is_(True))
        if profession:
            stmt = stmt.where(Professional.profession == profession)
        rows = list((await session.scalars(stmt.order_by(Professional.display_name))).all())
        if commune:
            rows = [p for p in rows if normalize(commune) in {normalize(c) for c in p.communes or []}]
        return rows

    async def search(self, session: AsyncSession, text: str) -> list[Professional]:
        """By Matrix id, or by name: every word of at least 3 letters must start a word of the name."""
        text = text.strip()
        if text.startswith("@"):
            prof = await self.get(session, text)
            return [prof] if prof else []
        words = [normalize(w) for w in text.replace("-", " ").split()]
        if not words or any(len(w) < 3 for w in words):
            raise ValueError("au moins 3 lettres du nom ou du prénom")
        found = []
        for prof in await self.members(session):
            name_words = normalize(prof.display_name).replace("-", " ").split()
            if all(any(nw.startswith(w) for nw in name_words) for w in words):
                found.append(prof)
        return found


async def upsert_professional(session: AsyncSession, *, user_id: str, display_name: str, profession: str,
                              now: datetime, roles: list[str] | None = None, communes: list[str] | None = None,
                              cpts: str = "", cotisation_until: datetime | None = None) -> Professional:
    prof = await session.get(Professional, user_id)
    if prof is None:
        prof = Professional(user_id=user_id, created_at=now, display_name=display_name, profession=profession,
                            roles=roles or [], communes=communes or [], cpts=cpts, absences=[],
                            cotisation_until=cotisation_until, active=True)
        session.add(prof)
    else:
        prof.display_name, prof.profession, prof.active = display_name, profession, True
        if roles is not None:
            prof.roles = roles
        if communes is not None:
            prof.communes = communes
        if cotisation_until is not None:
            prof.cotisation_until = cotisation_until
    return prof


async def seed_demo_directory(store, clock, cpts_name: str, accounts: list[dict]) -> None:
    """`cercle up`: the demo accounts are members, up to date with their cotisation until year end."""
    now = clock.now()
    year_end = now.replace(month=12, day=31, hour=23, minute=59)
    async with store.session.begin() as session:
        for a in accounts:
            roles = ["coordinateur"] if a["role"] == "coordinateur" else []
            await upsert_professional(session, user_id=a["user_id"], display_name=a["name"],
                                      profession=a["profession"], roles=roles, communes=["Brétigny-sur-Orge"],
                                      cpts=cpts_name, cotisation_until=year_end, now=now)

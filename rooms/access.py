"""Who may act: the facts about a person, handed to the one rule module (domain.permissions).

Only the patient's cercle acts on the patient (decisions.md 10), and each request action has one
rule; this module gathers what those rules need (directory entry, current cercle membership) and
turns a refusal into the French answer. Nothing else decides.
"""
from __future__ import annotations

from domain.demandes import Demande
from domain.markup import literal
from domain.permissions import Action, Actor, Permission, may_act_in_cercle
from domain.permissions import authorize as permission_for
from rooms.directory import profession_label
from rooms.patients import cercle_members
from storage.models import Patient, Professional


async def actor(ctx, patient: Patient | None, user_id: str) -> Actor:
    """The facts domain.permissions needs about `user_id`: directory entry and cercle membership."""
    member = patient is not None and user_id in {m.user_id for m in await cercle_members(ctx.session, patient.code)}
    prof = await ctx.services.directory.get(ctx.session, user_id)
    if prof is None:
        return Actor(user_id, in_directory=False, cercle_member=member)
    return Actor(user_id, profession=prof.profession, roles=frozenset(prof.roles or ()),
                 communes=frozenset(prof.communes or ()), cercle_member=member)


async def _refuse(ctx, permission: Permission) -> None:
    reason = permission.reason
    for user_id in permission.mentions.values():
        prof = await ctx.session.get(Professional, user_id)
        reason = reason.replace(user_id, literal(prof.display_name) if prof else user_id)
    ctx.refuse(f"⛔ {reason[0].upper()}{reason[1:]}. Rien n'a été fait.", usage=False)


async def authorize(ctx, action: Action, patient: Patient, d: Demande) -> Permission:
    """Ask the one rule for `action`; a refusal aborts the command (nothing written)."""
    permission = permission_for(action, d, await actor(ctx, patient, ctx.sender), profession_label)
    if not permission:
        await _refuse(ctx, permission)
    return permission


async def require_cercle(ctx, patient: Patient) -> None:
    """A command typed in a patient's room: only a current member of the cercle (or a coordinator)."""
    permission = may_act_in_cercle(await actor(ctx, patient, ctx.sender))
    if not permission:
        await _refuse(ctx, permission)

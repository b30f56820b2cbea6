"""One encrypted room per patient (cercle de soins), created and governed by the bot; the
`!patient nouveau` use case.

Room state is not end-to-end encrypted: names, topics and every state event carry the
pseudonymous code only. The identity travels in an encrypted message (pinned) and is stored
encrypted at rest in the bot's database.
"""
from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.markup import literal
from rooms.advertise import advertise_commands
from rooms.directory import resolve_person
from storage.crypto import FieldCipher
from storage.models import CercleMember, Inclusion, Patient, Professional

CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud on the phone


@dataclass
class Identity:
    nom: str
    prenom: str
    naissance: str  # ISO date
    sexe: str
    telephone: str
    adresse: str
    nir: str | None = None

    def card(self, code: str, mt_name: str | None) -> str:
        born = date.fromisoformat(self.naissance).strftime("%d/%m/%Y")
        lines = [f"🪪 **Fiche d'identité · {code}**", "",
                 f"- Nom : {literal(self.nom.upper())}", f"- Prénom : {literal(self.prenom)}", f"- Né·e le : {born}",
                 f"- Sexe : {literal(self.sexe)}", f"- Téléphone : {literal(self.telephone)}",
                 f"- Adresse : {literal(self.adresse)}"]
        if self.nir:
            lines.append(f"- NIR : {literal(self.nir)}")
        lines.append(f"- Médecin traitant : {literal(mt_name) if mt_name else 'aucun déclaré'}")
        return "\n".join(lines)


def power_levels() -> dict:
    """Only the bot changes state and invites: membership goes through its commands and checks.

    The bot, as the room's creator, has every power (room version 12 forbids listing the creator
    in `users`; older versions give the creator 100 by default)."""
    return {
        "users_default": 0,
        "events_default": 0, "state_default": 100,
        "invite": 100, "kick": 100, "ban": 100, "redact": 50,
        "events": {"m.room.name": 100, "m.room.topic": 100, "m.room.avatar": 100,
                   "m.room.power_levels": 100, "m.room.history_visibility": 100,
                   "m.room.encryption": 100, "m.room.pinned_events": 100, "m.room.join_rules": 100,
                   "m.room.tombstone": 100, "m.room.server_acl": 100,
                   "m.reaction": 0, "m.room.redaction": 0},
        "notifications": {"room": 100},
    }


def room_name(code: str, parcours_names: list[str]) -> str:
    return f"Cercle {code}" + (f" · {', '.join(parcours_names)}" if parcours_names else "")


async def new_code(session: AsyncSession) -> str:
    while True:
        code = "P-" + "".join(secrets.choice(CODE_ALPHABET) for _ in range(4))
        if await session.get(Patient, code) is None:
            return code


# The room is created by the outbox (action `create_room`), after the command's transaction has
# committed: a command rolled back leaves nothing on the homeserver. Until the room exists, what
# the command queued for it targets PENDING_ROOM + creation key (see OutboxSender._send_create_room).
PENDING_ROOM = "pending:"
# State event carrying the opaque creation key, so that a creation interrupted between
# room_create and recording its id is found again instead of repeated. Never any identity.
CREATION_STATE = "org.cercle.creation"


def creation_key(code: str) -> str:
    return f"patient:{code}"


def pending_room(code: str) -> str:
    return PENDING_ROOM + creation_key(code)


def creation_request(code: str, invite: list[str], notify: str | None = None) -> dict:
    """The create_room outbox content; `notify` is where to say so if the homeserver refuses."""
    return {"key": creation_key(code), "kind": "patient", "code": code, "invite": invite, "notify": notify}


async def record_patient_room(session: AsyncSession, code: str, room_id: str) -> None:
    patient = await session.get(Patient, code)
    if patient is not None:
        patient.room_id = room_id


async def abandon_patient_room(session: AsyncSession, code: str, now: datetime) -> None:
    """The homeserver refused the room for good: the cercle is archived rather than left pending."""
    patient = await session.get(Patient, code)
    if patient is not None and patient.room_id is None:
        patient.archived_at = now


async def patient_by_room(session: AsyncSession, room_id: str) -> Patient | None:
    return await session.scalar(select(Patient).where(Patient.room_id == room_id))


async def current_patient(ctx) -> Patient:
    """The patient whose room the command was typed in; refuses elsewhere, or once archived."""
    patient = await patient_by_room(ctx.session, ctx.room_id)
    if patient is None:
        ctx.refuse("ce salon n'est pas le cercle d'un patient", usage=False)
    if patient.archived_at is not None:
        ctx.refuse(f"le cercle {patient.code} est archivé", usage=False)
    return patient


async def patient_by_code(session: AsyncSession, code: str) -> Patient | None:
    return await session.get(Patient, code.upper())


def identity_of(cipher: FieldCipher, patient: Patient) -> Identity:
    return Identity(**cipher.decrypt_json(patient.identity_enc, f"patient:{patient.code}"))


def encrypt_identity(cipher: FieldCipher, code: str, identity: Identity) -> bytes:
    return cipher.encrypt_json(asdict(identity), f"patient:{code}")


async def cercle_members(session: AsyncSession, code: str) -> list[CercleMember]:
    return list((await session.scalars(select(CercleMember).where(
        CercleMember.patient_code == code, CercleMember.removed_at.is_(None)).order_by(CercleMember.added_at))).all())


async def is_member(ctx, patient: Patient, user_id: str) -> bool:
    return any(m.user_id == user_id for m in await cercle_members(ctx.session, patient.code))


async def active_inclusions(session: AsyncSession, code: str, parcours: str | None = None) -> list[Inclusion]:
    """The patient's current inclusions (not ended), or the one in `parcours`."""
    stmt = select(Inclusion).where(Inclusion.patient_code == code, Inclusion.ended_at.is_(None))
    if parcours is not None:
        stmt = stmt.where(Inclusion.parcours == parcours)
    return list((await session.scalars(stmt.order_by(Inclusion.id))).all())


async def add_member(session: AsyncSession, code: str, user_id: str, role: str, added_by: str,
                     now: datetime) -> bool:
    """True if newly added (or re-added after removal)."""
    row = await session.get(CercleMember, (code, user_id))
    if row is None:
        session.add(CercleMember(patient_code=code, user_id=user_id, role=role, added_by=added_by, added_at=now))
        return True
    if row.removed_at is not None:
        row.removed_at, row.added_at, row.added_by, row.role = None, now, added_by, role
        return True
    return False


def require_room(ctx, patient: Patient) -> str:
    """The patient's room id; refuses while the outbox has not created the room yet."""
    if patient.room_id is None:
        ctx.refuse(f"le salon du cercle {patient.code} est en cours de création ; réessayez dans un instant",
                   usage=False)
    return patient.room_id


def invite_with_identity(ctx, patient: Patient, user_id: str, why: str) -> None:
    """Invite into the patient room, then post the identity card again: a newcomer cannot decrypt
    messages sent before their device received the room key."""
    require_room(ctx, patient)
    ctx.queue("invite", patient.room_id, {"user_id": user_id})
    ident = identity_of(ctx.store.cipher, patient)
    card = ident.card(patient.code, patient.medecin_traitant)
    ctx.send(patient.room_id, f"{card}\n\n_(fiche renvoyée pour {user_id} : {why})_", mentions={user_id: user_id})


async def create_cercle(ctx, *, nom, prenom, naissance, sexe, tel, adresse, mt=None, nir=None, commune=None,
                        pros=None) -> None:
    """`!patient nouveau`: the patient, their cercle and the room's creation, queued in the
    command's transaction (arguments already parsed by commands.cercle)."""
    creator = await ctx.services.directory.get(ctx.session, ctx.sender)
    mt_prof = await resolve_person(ctx, mt) if mt else None
    if mt_prof and mt_prof.profession != "medecin_generaliste":
        ctx.refuse(f"{literal(mt_prof.display_name)} n'est pas médecin généraliste : il ne peut pas être médecin traitant")
    others = [await resolve_person(ctx, p) for p in pros or []]
    invitees: dict[str, Professional] = {p.user_id: p for p in ([mt_prof] if mt_prof else []) + others}
    if creator and creator.profession != "autre":  # a coordinator alone does not join every cercle
        invitees.setdefault(creator.user_id, creator)

    code = await new_code(ctx.session)
    identity = Identity(nom=nom, prenom=prenom, naissance=naissance.isoformat(), sexe=sexe, telephone=tel,
                        adresse=adresse, nir=nir)
    # No room yet: the outbox creates it once this transaction has committed, so a command that
    # fails leaves nothing on the homeserver. Everything for the room is queued against its
    # creation key and goes out, in order, once the room exists.
    ctx.session.add(Patient(code=code, room_id=None, identity_enc=encrypt_identity(ctx.store.cipher, code, identity),
                            medecin_traitant=mt_prof.user_id if mt_prof else None, created_by=ctx.sender,
                            created_at=ctx.now, commune=commune, birth_year=naissance.year))
    for user_id in invitees:
        role = "medecin_traitant" if mt_prof and user_id == mt_prof.user_id else "habituel"
        await add_member(ctx.session, code, user_id, role, ctx.sender, ctx.now)
    room_id = pending_room(code)
    ctx.queue("create_room", room_id,
              creation_request(code, [u for u in invitees if u != ctx.services.bot_user_id], notify=ctx.room_id))

    card = identity.card(code, mt_prof.display_name if mt_prof else None)
    ctx.send(room_id, card + "\n\nTapez `!aide` pour les commandes du cercle.", ref=f"identity:{code}",
             mentions={u: p.display_name for u, p in invitees.items()})
    ctx.queue("pin", room_id, {"ref": f"identity:{code}"})

    await advertise_commands(ctx.services, ctx.session, room_id, "patient")  # commands.registry.PATIENT
    members = ", ".join(literal(p.display_name) for p in invitees.values()) or "personne"
    ctx.reply(f"✅ Cercle **{code}** créé : le salon « {room_name(code, [])} » est en cours de création, "
              f"les invitations partent dans un instant. Invité·e·s : {members}.\n"
              f"Pour inclure le patient dans un parcours : `!inclure <parcours>` dans ce salon.")
    ctx.to_coordinators(f"🆕 Nouveau cercle **{code}** créé par {ctx.sender}"
                        f"{' ; médecin traitant : ' + literal(mt_prof.display_name) if mt_prof else ' ; sans médecin traitant'}.")

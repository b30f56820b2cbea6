"""Suivi: données de base (`!donnees`), the follow-up checklist (`!suivi`), reminders and digests.

Values are typed by the parcours data and kept encrypted, append-only (storage.suivi). A measured
value that crosses a red-flag threshold makes the bot *propose* the prepared `!redflag`; it never
raises one (decisions.md 6). Reminders exist only where the documents give an interval
(decisions.md 16); they are deadline rows (sent once), due at `next_allowed` of each professional
concerned (decisions.md 1: notification hours hold back what is not urgent). Digests are
deadline rows too: monthly per patient room (chronic parcours), weekly per professional.
"""
from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta

from sqlalchemy import select, update

from domain.markup import literal
from domain.notification_hours import ALWAYS, NotificationHours
from domain.parcours import DonneeBase, ElementSuivi, Parcours, parse_periode
from domain.suivi import (
    Contexte,
    Echeance,
    Fait,
    Mesure,
    SaisieError,
    at_local,
    echeance,
    etat,
    match_names,
    mesures,
    names_of,
    parse_date,
    parse_donnee,
    propose_red_flag,
    show_value,
)
from domain.text import format_french_date, format_french_datetime, normalize
from rooms import demandes, indemnites
from rooms.directory import names
from rooms.patients import active_inclusions, cercle_members, identity_of
from storage import suivi as observations
from storage.models import BotState, CercleMember, Deadline, Inclusion, Patient, Professional

RAPPEL, RETARD = "suivi.rappel", "suivi.retard"
DIGEST_PATIENT, DIGEST_PRO = "suivi.digest_patient", "suivi.digest_pro"


# --- helpers ---------------------------------------------------------------------------------------

async def _parcours(ctx, patient: Patient) -> list[tuple[Parcours, Inclusion]]:
    catalogue = ctx.services.catalogue
    return [(catalogue[i.parcours], i) for i in await active_inclusions(ctx.session, patient.code)
            if i.parcours in catalogue]


def _today(ctx) -> date:
    return ctx.now.astimezone(ctx.services.tz).date()


def _when(ctx, instant: datetime) -> str:
    return format_french_datetime(instant, ctx.services.tz, now=ctx.now)


def _day(ctx, instant: datetime) -> str:
    local = instant.astimezone(ctx.services.tz)
    return format_french_date(local.date(), with_year=local.year != ctx.now.astimezone(ctx.services.tz).year)


def _user_key(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:10]  # refs are 100 characters at most


def hours_of(prof: Professional | None) -> NotificationHours:
    try:
        return NotificationHours.parse(prof.notification_hours if prof else None)
    except ValueError:
        return ALWAYS


async def _pick(ctx, typed: str, entries: list[tuple[str, list[str]]], what: str, every: list[str]) -> str:
    """One code for `typed`, or a French refusal: none matches, or a question when several do."""
    found = match_names(typed, entries)
    if not found:
        ctx.refuse(f"« {literal(typed)} » n'est pas {what} des parcours du patient ({', '.join(every) or 'aucun'})")
    if len(found) > 1:
        ctx.refuse(f"« {literal(typed)} » peut désigner : {', '.join(found)}. Lequel ? Précisez le nom.", usage=False)
    return found[0]


# --- données de base -------------------------------------------------------------------------------

async def donnees(ctx, patient: Patient, entries: list[str]) -> None:
    """`!donnees`: show what is filled and missing, one element's history (`!donnees poids`), or
    record `élément=valeur` entries (all or none)."""
    await _ensure_sender_digest(ctx)
    inclusions = await _parcours(ctx, patient)
    with_data = [(p, i) for p, i in inclusions if p.donnees_de_base]
    if not with_data:
        ctx.refuse("le patient n'est inclus dans aucun parcours avec des données de base (`!inclure <parcours>`)",
                   usage=False)
    if not entries:
        await _show_donnees(ctx, patient, with_data)
        return
    by_code: dict[str, list[tuple[Parcours, DonneeBase]]] = {}
    for p, _ in with_data:
        for d in p.donnees_de_base:
            by_code.setdefault(d.code, []).append((p, d))
    choices = [(code, names_of(pairs[0][1])) for code, pairs in by_code.items()]
    if len(entries) == 1 and "=" not in entries[0]:
        await _show_history(ctx, patient, await _pick(ctx, entries[0], choices, "une donnée de base",
                                                      list(by_code)), by_code)
        return
    parsed: list[tuple[str, object]] = []
    for entry in entries:
        key, sep, raw = entry.partition("=")
        if not sep:
            ctx.refuse(f"« {literal(entry)} » : écrivez élément=valeur, par exemple poids=82.5")
        code = await _pick(ctx, key, choices, "une donnée de base", list(by_code))
        if code in (c for c, _ in parsed):
            ctx.refuse(f"{code} est donné deux fois")
        try:
            parsed.append((code, parse_donnee(by_code[code][0][1], raw, _today(ctx))))
        except SaisieError as e:
            ctx.refuse(str(e))
    lines, proposals = ["✅ **Données de base enregistrées**", ""], []
    for code, value in parsed:
        d = by_code[code][0][1]
        previous = None
        for p, _ in by_code[code]:
            past = await observations.history(ctx.session, ctx.store.cipher, patient.code, parcours=p.code,
                                              kind="donnee", element=code)
            previous = previous or (past[-1] if past else None)
            await observations.record(ctx.session, ctx.store.cipher, patient_code=patient.code, parcours=p.code,
                                      kind="donnee", element=code, value=value, at=ctx.now, by=ctx.sender, now=ctx.now)
            if p.red_flags is not None:
                hits, command = propose_red_flag(
                    p, mesures(p, code, value, [Mesure(r.at, r.value) for r in past], ctx.now))
                if command:
                    proposals.append((p, hits, command))
        by = (await names(ctx.session, [previous.recorded_by]))[previous.recorded_by] if previous else ""
        before = (f" (précédent : {literal(show_value(d, previous.value))}, le {_when(ctx, previous.recorded_at)}"
                  f" par {by})" if previous else "")
        lines.append(f"- {d.libelle} : **{literal(show_value(d, value))}**{before}")
    for p, _ in with_data:  # a schedule anchor just filled: what is already due is said now, not reminded
        anchors = {e.rappel.depart for e in p.elements_de_suivi if e.rappel}
        if anchors & {code for code, _ in parsed}:
            c = await _context(ctx, patient, p, next(i for q, i in with_data if q.code == p.code))
            c.donnees.update({code: value for code, value in parsed})
            due = [e.libelle for e in p.elements_de_suivi
                   if etat(echeance(p, e, c), c.faits.get(e.code, []), ctx.now) in ("a_faire", "en_retard")]
            if due:
                lines += ["", f"🔔 Déjà à faire ({p.nom}) : {', '.join(due)}. Les suivants seront rappelés à leur date "
                              "(`!suivi` pour le calendrier)."]
    for p, hits, command in proposals:
        lines += ["", f"🚩 **Seuil de red flag franchi** ({p.nom}) : "
                  + " ; ".join(f"{h.seuil_texte} ({h.valeur.texte})" for h in hits)
                  + ". Rien n'est levé automatiquement : si la situation le justifie, envoyez",
                  f"`{command}`"]
    ctx.reply("\n".join(lines))
    for p, _ in with_data:  # the données de base may now be complete: a pending inclusion line becomes éligible
        await indemnites.recheck_inclusions(ctx.session, ctx.services, patient.code, p.code, ctx.now)
    await replan(ctx, patient)


async def _show_history(ctx, patient: Patient, code: str, by_code) -> None:
    d = by_code[code][0][1]
    lines = [f"**{d.libelle} · {patient.code}** (historique)"]
    for p, _ in by_code[code]:
        past = await observations.history(ctx.session, ctx.store.cipher, patient.code, parcours=p.code,
                                          kind="donnee", element=code)
        noms = await names(ctx.session, {r.recorded_by for r in past})
        if len(by_code[code]) > 1:
            lines.append(f"\n{p.nom}")
        lines += [f"- {_when(ctx, r.recorded_at)} : {literal(show_value(d, r.value))} "
                  f"({noms.get(r.recorded_by, r.recorded_by)})" for r in reversed(past[-20:])] or ["- non renseigné"]
    ctx.reply("\n".join(lines))


async def _ensure_sender_digest(ctx) -> None:
    prof = await ctx.services.directory.get(ctx.session, ctx.sender)
    if prof is not None and prof.profession != "autre":
        await ensure_weekly_digest(ctx, prof)


async def _show_donnees(ctx, patient: Patient, with_data) -> None:
    lines = [f"**Données de base · {patient.code}**"]
    for p, _ in with_data:
        past = await observations.history(ctx.session, ctx.store.cipher, patient.code, parcours=p.code, kind="donnee")
        latest = {r.element: r for r in past}
        noms = await names(ctx.session, {r.recorded_by for r in latest.values()})
        filled = [d for d in p.donnees_de_base if d.code in latest]
        missing = [d for d in p.donnees_de_base if d.code not in latest]
        lines += ["", f"**{p.nom}** ({len(filled)}/{len(p.donnees_de_base)} renseignées)"]
        for d in filled:
            r = latest[d.code]
            lines.append(f"- ✅ {d.libelle} : {literal(show_value(d, r.value))} "
                         f"({noms.get(r.recorded_by, r.recorded_by)}, {_when(ctx, r.recorded_at)})")
        for d in missing:
            lines.append(f"- ⬜ {d.libelle} : à renseigner (`{d.code}=…`)")
    ctx.reply("\n".join(lines))


async def measures_from_history(ctx, patient: Patient, p: Parcours, code: str, value) -> list:
    """What a value typed in `!redflag` (poids=84) measures against the recorded données: the
    variations the parcours' thresholds compare (decisions.md 6), without recording anything."""
    past = await observations.history(ctx.session, ctx.store.cipher, patient.code, parcours=p.code, kind="donnee",
                                      element=code)
    return mesures(p, code, value, [Mesure(r.at, r.value) for r in past], ctx.now)


# --- éléments de suivi -----------------------------------------------------------------------------

async def _context(ctx, patient: Patient, p: Parcours, inclusion: Inclusion) -> Contexte:
    past = await observations.history(ctx.session, ctx.store.cipher, patient.code, parcours=p.code)
    donnees_latest = {r.element: r.value for r in past if r.kind == "donnee"}
    faits: dict[str, list[Fait]] = {}
    for r in sorted((r for r in past if r.kind == "suivi"), key=lambda r: r.at):
        faits.setdefault(r.element, []).append(Fait(r.at, r.value))
    try:
        naissance = date.fromisoformat(identity_of(ctx.store.cipher, patient).naissance)
    except (ValueError, TypeError):
        naissance = None
    return Contexte(tz=ctx.services.tz, inclusion=inclusion.included_at, donnees=donnees_latest, faits=faits,
                    naissance=naissance)


_STATES = {"fait": "✅", "a_venir": "🕒", "a_faire": "🔔", "en_retard": "⚠️", "manquant": "⬜"}


async def checklist(ctx, patient: Patient) -> None:
    """`!suivi`: each parcours as a checklist (done when/by whom/value, missing, due, overdue)."""
    inclusions = [(p, i) for p, i in await _parcours(ctx, patient) if p.elements_de_suivi]
    if not inclusions:
        ctx.refuse("le patient n'est inclus dans aucun parcours avec des éléments de suivi", usage=False)
    lines = [f"**Suivi · {patient.code}**"]
    for p, inclusion in inclusions:
        c = await _context(ctx, patient, p, inclusion)
        past = await observations.history(ctx.session, ctx.store.cipher, patient.code, parcours=p.code, kind="suivi")
        last_by = {r.element: r for r in past}
        noms = await names(ctx.session, {r.recorded_by for r in last_by.values()})
        lines += ["", f"**{p.nom}**"]
        for e in p.elements_de_suivi:
            ech = echeance(p, e, c)
            state = etat(ech, c.faits.get(e.code, []), ctx.now)
            line = f"- {_STATES[state]} {e.libelle}"
            r = last_by.get(e.code)
            if r is not None:
                value = f", {literal(show_fait(e, r.value))}" if r.value else ""
                line += f" : fait le {_day(ctx, r.at)} ({noms.get(r.recorded_by, r.recorded_by)}{value})"
            if ech is not None and state in ("a_faire", "en_retard", "a_venir"):
                line += {"a_faire": f" · **à faire** depuis le {_day(ctx, ech.due)}",
                         "a_venir": f" · prochain : {_day(ctx, ech.due)}",
                         "en_retard": f" · **en retard** depuis le {_day(ctx, ech.overdue or ech.due)}"}[state]
            elif state == "manquant":
                line += " : non renseigné"
            lines.append(line)
        waiting = [e for e in p.elements_de_suivi if e.rappel and e.rappel.depart in {d.code for d in p.donnees_de_base}
                   and e.rappel.depart not in c.donnees]
        for anchor in sorted({e.rappel.depart for e in waiting}):
            lines.append(f"- ℹ️ calendrier en attente de `!donnees {anchor}=JJ/MM/AAAA`")
    lines.append("\nPour noter un élément : `!suivi <élément> [valeur] [JJ/MM/AAAA]`.")
    ctx.reply("\n".join(lines))


async def record_suivi(ctx, patient: Patient, tokens: list[str]) -> None:
    """`!suivi <élément> [valeur] [date]`: record it (a « suivi » act for the ledger), then replan.
    The élément's name is the longest run of first words that names one (« echo t1 positif »);
    when it names several, the bot asks with a poll (a vote records the chosen one)."""
    await _ensure_sender_digest(ctx)
    inclusions = [(p, i) for p, i in await _parcours(ctx, patient) if p.elements_de_suivi]
    if not inclusions:
        ctx.refuse("le patient n'est inclus dans aucun parcours avec des éléments de suivi", usage=False)
    entries = [(f"{p.code}:{e.code}", names_of(e)) for p, _ in inclusions for e in p.elements_de_suivi]
    found, element, rest = [], tokens[0], tokens[1:]
    for k in range(len(tokens), 0, -1):
        found = match_names(" ".join(tokens[:k]), entries)
        if found:
            element, rest = " ".join(tokens[:k]), tokens[k:]
            break
    if not found:
        every = ", ".join(e.code for p, _ in inclusions for e in p.elements_de_suivi)
        ctx.refuse(f"« {literal(element)} » n'est pas un élément de suivi des parcours du patient ({every})")
    day, value = _date_and_value(ctx, rest)
    groups = list(dict.fromkeys(f.split(":")[1] for f in found))
    if len(groups) > 1:  # the same élément in two parcours is one act per parcours, not a question
        await _ask_which(ctx, patient, element, found, day, value)
        return
    await _record(ctx, patient, found, day, value)


def _date_and_value(ctx, rest: list[str]) -> tuple[date | None, str | None]:
    today = _today(ctx)
    day, words = None, []
    for word in rest:
        looks_like_date = any(ch.isdigit() for ch in word) and word.count("/") == 2
        parsed = parse_date(word, today)  # JJ/MM/AAAA, and « hier », « aujourd'hui »
        if looks_like_date and parsed is None:
            ctx.refuse(f"« {literal(word)} » n'est pas une date qui existe (JJ/MM/AAAA)")
        if parsed is not None and day is None:
            day = parsed
        else:
            words.append(word)
    if day is not None and day > today:
        ctx.refuse(f"« {day:%d/%m/%Y} » est dans le futur : notez un élément une fois réalisé")
    return day, " ".join(words).strip() or None


async def _record(ctx, patient: Patient, keys: list[str], day: date | None, value: str | None) -> None:
    at = ctx.now if day is None or day == _today(ctx) else at_local(day, ctx.services.tz)
    lines = []
    for key in keys:
        pcode, ecode = key.split(":")
        p = ctx.services.catalogue[pcode]
        e = p.element(ecode)
        if e.rappel is not None and e.rappel.a_saisir is not None:
            try:
                value = str(parse_periode((value or "").replace(" ", "")))
            except ValueError:
                ctx.refuse(f"{e.libelle} : indiquez la {e.rappel.a_saisir} (par exemple 3ans, 5ans) et la date de "
                           "pose : `!suivi implant 3ans 12/01/2026`")
        stored, signs = value, []
        if e.champs and value and "=" in value:
            stored, signs = _fiche(ctx, p, e, value)
        row = await observations.record(ctx.session, ctx.store.cipher, patient_code=patient.code, parcours=p.code,
                                        kind="suivi", element=e.code, value=stored, at=at, by=ctx.sender, now=ctx.now)
        # One act per professional, élément and day done: the same élément typed again that day (a
        # correction, a double post, « fait » after `!suivi`) is kept as an observation, not paid twice.
        done = at.astimezone(ctx.services.tz).date()
        await indemnites.record(ctx, user_id=ctx.sender, kind="suivi",
                                ref=f"suivi-acte:{patient.code}:{p.code}:{e.code}:{done:%Y-%m-%d}",
                                patient_code=patient.code, parcours=p.code, element=e.code, observation=row.id,
                                photos=isinstance(stored, dict) and stored["champs"].get(PHOTOS_FIELD) is True)
        lines.append(f"✅ **{e.libelle}** ({p.nom}) noté : {_day(ctx, at)}"
                     + (f", {literal(show_fait(e, stored))}" if stored else "") + ".")
        if signs:
            lines.append(f"🚩 Signe de red flag du parcours noté ({', '.join(c.libelle for c in signs)}). Rien n'est "
                         "levé automatiquement : si la situation le justifie, envoyez")
            lines.append(f"`!redflag parcours={p.code} signes={','.join(c.code for c in signs)} <votre inquiétude>`")
        if e.si_positif and value and normalize(value).startswith(("positif", "positive", "+", "oui")):
            lines.append("Résultat positif ; le livret prévoit :")
            lines += [f"- {a.libelle}" + (f" : `!dec {a.declencher} …`" if a.declencher else "") for a in e.si_positif]
    ctx.reply("\n".join(lines))
    await replan(ctx, patient)


def _fiche(ctx, p: Parcours, e: ElementSuivi, text: str) -> tuple[dict, list]:
    """A form's fields typed as `champ=valeur` (plaie: fiche suivi de pansement, decisions.md 17),
    each checked like a donnée; the rest is a comment. Also the observed red-flag signs it shows
    (évolution=aggravation)."""
    champs, words = {}, []
    entries = [(c.code, names_of(c)) for c in e.champs]
    for word in text.split():
        key, sep, raw = word.partition("=")
        if not sep:
            words.append(word)
            continue
        found = match_names(key, entries)
        if len(found) != 1:
            ctx.refuse(f"« {literal(key)} » n'est pas un champ de « {e.libelle} » "
                       f"({', '.join(c.code for c in e.champs)})")
        champ = next(c for c in e.champs if c.code == found[0])
        try:
            champs[champ.code] = parse_donnee(champ, raw, _today(ctx))
        except SaisieError as err:
            ctx.refuse(str(err))
    constates = p.red_flags.constates if p.red_flags else []
    signs = [c for c in constates for v in champs.values() if isinstance(v, str) and normalize(v) == c.code]
    return {"champs": champs, "texte": " ".join(words) or None}, signs


def show_fait(e: ElementSuivi, value) -> str:
    """A recorded élément's value: text, or a form's fields."""
    if not isinstance(value, dict):
        return str(value)
    shown = [f"{c.libelle} {show_value(c, value['champs'][c.code])}" for c in e.champs if c.code in value["champs"]]
    return ", ".join(shown + ([value["texte"]] if value.get("texte") else []))


def _question_key(ref: str) -> str:
    return f"suivi-question:{ref}"


async def _ask_which(ctx, patient: Patient, typed: str, found: list[str], day: date | None,
                     value: str | None) -> None:
    """Several éléments match: a poll (votes come back to `which_voted`); the typed value and date
    wait, encrypted, with the question."""
    labels = [ctx.services.catalogue[k.split(":")[0]].element(k.split(":")[1]).libelle for k in found]
    ref = f"suiviq:{ctx.event_id}"
    pending = {"patient": patient.code, "keys": found, "day": day.isoformat() if day else None, "value": value,
               "asked_by": ctx.sender}
    await ctx.session.merge(BotState(key=_question_key(ref)[:100],
                                     value_enc=ctx.store.cipher.encrypt_json(pending, _question_key(ref))))
    ctx.send_poll(ctx.room_id, f"« {typed} » : quel élément de suivi notez-vous ?", labels[:20], ref=ref,
                  reply_to=ctx.event_id)


async def which_voted(ctx, ref: str, answer_ids: list[str]) -> None:
    """A vote on « quel élément ? »: records the chosen one for the voter, then ends the poll."""
    row = await ctx.session.get(BotState, _question_key(ref)[:100])
    if row is None or not answer_ids:
        return
    pending = ctx.store.cipher.decrypt_json(row.value_enc, _question_key(ref))
    patient = await ctx.session.get(Patient, pending["patient"])
    if patient is None or patient.room_id != ctx.room_id or not await _may_record(ctx, patient):
        return
    try:
        key = pending["keys"][int(answer_ids[0]) - 1]
    except (ValueError, IndexError):
        return
    await ctx.session.delete(row)
    day = date.fromisoformat(pending["day"]) if pending["day"] else None
    await _record(ctx, patient, [key], day, pending["value"])
    ctx.end_poll(ctx.room_id, ref, "Élément noté.")


async def _may_record(ctx, patient: Patient) -> bool:
    """Votes and replies skip the command checks: a directory member of the cercle only."""
    if await ctx.services.directory.get(ctx.session, ctx.sender) is None:
        return False
    return any(m.user_id == ctx.sender for m in await cercle_members(ctx.session, patient.code))


# The fiche's « Photos postées » field: the plaie suivi act's other criterion (S000 L922 « Poste de
# photos et renseignement de la fiche de suivi »; data/parcours/plaie.yaml, tarif plaie_suivi).
PHOTOS_FIELD = "photos_postees"

_DONE = ("fait", "faite", "ok", "✅", "realise", "realisee", "fini", "effectue", "effectuee")


async def reminder_answered(ctx, ref: str, text: str) -> bool:
    """« fait [valeur] [date] » in reply to a reminder records that élément (REPLY_HANDLERS)."""
    words = text.split()
    if not words or normalize(words[0]).strip(".!,") not in _DONE:
        return False
    deadline = await ctx.session.get(Deadline, int(ref.split(":")[1])) if ref.split(":")[1].isdigit() else None
    if deadline is None or deadline.kind not in (RAPPEL, RETARD):
        return False
    patient = await ctx.session.get(Patient, deadline.payload["patient"])
    if patient is None or patient.room_id != ctx.room_id or not await _may_record(ctx, patient):
        return False
    day, value = _date_and_value(ctx, words[1:])
    await _record(ctx, patient, [f"{deadline.payload['parcours']}:{deadline.payload['element']}"], day, value)
    return True


# --- reminders (deadline rows) ---------------------------------------------------------------------

async def _concerned(ctx, patient: Patient, e: ElementSuivi) -> list[Professional]:
    """The cercle's professionals the élément names (`concerne`), or the whole cercle."""
    profs = [await ctx.services.directory.get(ctx.session, m.user_id)
             for m in await cercle_members(ctx.session, patient.code)]
    profs = [p for p in profs if p is not None and p.profession != "autre"]
    named = [p for p in profs if p.profession in e.concerne
             or ("medecin_traitant" in e.concerne and p.user_id == patient.medecin_traitant)]
    return named or profs


def _ref(patient: Patient, element: str, due: datetime, user_id: str) -> str:
    return f"suivi:{patient.code}:{element}:{due:%Y%m%d%H%M}:{_user_key(user_id)}"


async def replan(ctx, patient: Patient) -> None:
    """Plan each élément's next reminders: one row per professional concerned, at their next allowed
    hour. Rows of an earlier plan still pending are cancelled; a (kind, ref) that fired is not planned
    again (each reminder is sent once); a cancelled one wanted again is re-armed."""
    if patient.room_id is None:
        return
    planned: set[tuple[str, str]] = set()
    wanted: list[tuple[str, str, datetime, dict]] = []
    chronic = False
    for p, inclusion in await _parcours(ctx, patient):
        chronic = chronic or p.categorie == "chronique"
        if not any(e.rappel for e in p.elements_de_suivi):
            continue
        c = await _context(ctx, patient, p, inclusion)
        for e in p.elements_de_suivi:
            ech = echeance(p, e, c)
            if ech is None:
                continue
            people = await _concerned(ctx, patient, e)
            for kind, instant in ((RAPPEL, ech.due), (RETARD, ech.overdue)):
                if instant is None or instant < ctx.now - timedelta(minutes=1):
                    continue  # already due when planned: shown by `!suivi` and the digests, not re-announced
                for prof in people:
                    ref = _ref(patient, e.code, instant, prof.user_id)
                    due_at = hours_of(prof).next_allowed(instant, ctx.services.tz)
                    wanted.append((kind, ref, due_at, {"room_id": patient.room_id, "patient": patient.code,
                                                       "parcours": p.code, "element": e.code,
                                                       "user_id": prof.user_id, "instant": instant.isoformat()}))
                    planned.add((kind, ref))
                    await ensure_weekly_digest(ctx, prof)
    prefix = f"suivi:{patient.code}:"
    pending = (await ctx.session.scalars(select(Deadline).where(
        Deadline.kind.in_((RAPPEL, RETARD)), Deadline.ref.startswith(prefix)))).all()
    existing = {(d.kind, d.ref) for d in pending}
    stale = [d.id for d in pending if d.status == "pending" and (d.kind, d.ref) not in planned]
    if stale:
        await ctx.session.execute(update(Deadline).where(Deadline.id.in_(stale)).values(status="cancelled")
                                  .execution_options(synchronize_session=False))
    by_key = {(d.kind, d.ref): d for d in pending}
    for kind, ref, due_at, payload in wanted:
        row = by_key.get((kind, ref))
        if row is not None and row.status == "cancelled":
            row.status, row.payload = "pending", payload  # never sent: wanted again (a parcours rejoined)
        if row is not None and row.status == "pending" and row.due_at != due_at:
            row.due_at = due_at  # the professional's hours changed since it was planned
        if (kind, ref) not in existing:
            await ctx.store.add_deadline(kind, ref, due_at, ctx.now, payload=payload, session=ctx.session)
            existing.add((kind, ref))
    if chronic:
        await ensure_monthly_digest(ctx, patient)


async def _still_due(ctx, deadline) -> tuple[Patient, Parcours, ElementSuivi, Echeance] | None:
    payload = deadline.payload
    patient = await ctx.session.get(Patient, payload["patient"])
    p = ctx.services.catalogue.get(payload["parcours"])
    if patient is None or patient.archived_at is not None or p is None:
        return None
    inclusion = next(iter(await active_inclusions(ctx.session, patient.code, p.code)), None)
    e = p.element(payload["element"])
    if inclusion is None or e is None:
        return None
    ech = echeance(p, e, await _context(ctx, patient, p, inclusion))
    planned = datetime.fromisoformat(payload["instant"])
    if ech is None or planned not in (ech.due, ech.overdue):
        return None  # done since, or the plan moved (its own rows exist)
    return patient, p, e, ech


async def remind(ctx, deadline) -> None:
    """A due or overdue élément, in the patient room, mentioning the professional it is planned for."""
    found = await _still_due(ctx, deadline)
    if found is None:
        return
    patient, p, e, ech = found
    user = deadline.payload["user_id"]
    noms = await names(ctx.session, [user])
    if deadline.kind == RETARD:
        head = f"⚠️ **Suivi en retard · {p.nom}** : {e.libelle} ({literal(ech.texte)})"
    else:
        head = f"🔔 **Suivi à faire · {p.nom}** : {e.libelle} ({literal(ech.texte)})"
    ctx.send(patient.room_id, f"{head}.\nUne fois fait : `!suivi {e.code}`, ou répondez « fait » à ce message. "
             f"{user}", mentions={user: noms[user]}, ref=f"suivi:{deadline.id}")


# --- digests -----------------------------------------------------------------------------------------

def _first_of_next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


async def ensure_monthly_digest(ctx, patient: Patient) -> None:
    """One pending monthly digest per patient room (chronic parcours: decisions.md 16)."""
    day = _first_of_next_month(_today(ctx))
    await _ensure(ctx, DIGEST_PATIENT, f"digest:{patient.code}:{day:%Y-%m}", at_local(day, ctx.services.tz),
                  {"room_id": patient.room_id, "patient": patient.code})


async def ensure_weekly_digest(ctx, prof: Professional) -> None:
    """One pending weekly digest per professional, Monday at their first allowed hour."""
    today = _today(ctx)
    monday = today + timedelta(days=7 - today.weekday())
    instant = hours_of(prof).next_allowed(at_local(monday, ctx.services.tz), ctx.services.tz)
    await _ensure(ctx, DIGEST_PRO, f"digest:{_user_key(prof.user_id)}:{monday:%G-W%V}", instant,
                  {"user_id": prof.user_id})


async def _ensure(ctx, kind: str, ref: str, due_at: datetime, payload: dict) -> None:
    row = await ctx.session.scalar(select(Deadline).where(Deadline.kind == kind, Deadline.ref == ref))
    if row is None:
        await ctx.store.add_deadline(kind, ref, due_at, ctx.now, payload=payload, session=ctx.session)
    elif row.status == "pending" and row.due_at != due_at:
        row.due_at = due_at  # the professional's hours changed


async def _missing(ctx, patient: Patient, p: Parcours, inclusion: Inclusion) -> list[str]:
    c = await _context(ctx, patient, p, inclusion)
    out = [f"donnée de base à renseigner : {d.libelle}" for d in p.donnees_de_base if d.code not in c.donnees]
    for e in p.elements_de_suivi:
        state = etat(echeance(p, e, c), c.faits.get(e.code, []), ctx.now)
        if state in ("manquant", "a_faire", "en_retard"):
            out.append({"manquant": "jamais renseigné", "a_faire": "à faire", "en_retard": "en retard"}[state]
                       + f" : {e.libelle}")
    return out


async def digest_patient(ctx, deadline) -> None:
    """Monthly, in the patient room: what is missing or overdue in the chronic parcours."""
    patient = await ctx.session.get(Patient, deadline.payload["patient"])
    if patient is None or patient.archived_at is not None or patient.room_id is None:
        return
    chronic = [(p, i) for p, i in await _parcours(ctx, patient) if p.categorie == "chronique"]
    if not chronic:
        return
    lines = [f"🗓️ **Point mensuel du suivi · {patient.code}**"]
    for p, inclusion in chronic:
        missing = await _missing(ctx, patient, p, inclusion)
        lines += ["", f"**{p.nom}** : " + ("tout est renseigné." if not missing else "")]
        lines += [f"- {m}" for m in missing]
    lines.append("\nDétail : `!suivi`, `!donnees`.")
    ctx.send(patient.room_id, "\n".join(lines), ref=f"digest:{deadline.id}")
    await ensure_monthly_digest(ctx, patient)


async def digest_pro(ctx, deadline) -> None:
    """Weekly, in the professional's direct chat: « ce qui vous attend »."""
    user = deadline.payload["user_id"]
    prof = await ctx.services.directory.get(ctx.session, user)
    if prof is None:
        return
    lines = ["📋 **Ce qui vous attend cette semaine**"]
    asked, mine = [], []
    for row in await demandes.open_rows(ctx.session):
        d = demandes.read(ctx.store.cipher, row)
        if d.acceptee_par == user:
            mine.append(f"- {row.patient_code}/{d.numero} · {d.libelle or d.flow} ({d.etat.value.replace('_', ' ')})")
        elif d.acceptee_par is None and user in d.sollicites and user not in d.refus:  # declined: answered
            asked.append(f"- {row.patient_code}/{d.numero} · {d.libelle or d.flow} : réponse attendue")
    lines += ["", "**Demandes en attente de votre réponse**", *(asked or ["- aucune"])]
    lines += ["", "**Vos prises en charge en cours**", *(mine or ["- aucune"])]
    late = []
    member_of = {m.patient_code for m in await _memberships(ctx, user)}
    for code in sorted(member_of):
        patient = await ctx.session.get(Patient, code)
        if patient is None or patient.archived_at is not None:
            continue
        for p, inclusion in await _parcours(ctx, patient):
            c = await _context(ctx, patient, p, inclusion)
            for e in p.elements_de_suivi:
                if etat(echeance(p, e, c), c.faits.get(e.code, []), ctx.now) in ("a_faire", "en_retard") \
                        and user in {x.user_id for x in await _concerned(ctx, patient, e)}:
                    late.append(f"- {code} · {p.nom} : {e.libelle}")
    lines += ["", "**Suivis à faire ou en retard**", *(late or ["- aucun"])]
    if asked or mine or late:  # an empty week sends nothing (questionnaires: none in the data yet)
        demandes.queue_direct(ctx, user, "\n".join(lines), ref=f"digest:{deadline.id}")
    await ensure_weekly_digest(ctx, prof)


async def _memberships(ctx, user: str) -> list[CercleMember]:
    return list((await ctx.session.scalars(select(CercleMember).where(
        CercleMember.user_id == user, CercleMember.removed_at.is_(None)))).all())


# --- notification hours ------------------------------------------------------------------------------

async def set_hours(ctx, text: str | None) -> None:
    """`!horaires`: show, set or clear the sender's notification hours (S002 L535)."""
    prof = await ctx.services.directory.get(ctx.session, ctx.sender)
    if text is None:
        current = hours_of(prof)
        ctx.reply(f"Vos horaires de notification : **{current}**. Rappels de suivi et récapitulatifs attendent "
                  "ces horaires ; red flags, alertes et délais restent immédiats. Pour changer : `!horaires 8h-19h`.")
        return
    if normalize(text.strip()) in ("aucun", "aucune", "toujours", "tout le temps"):
        hours = ALWAYS
    else:
        try:
            hours = NotificationHours.parse(text)
        except ValueError as e:
            ctx.refuse(str(e))
    prof.notification_hours = hours.storage_text()
    moved = 0
    for row in (await ctx.session.scalars(select(Deadline).where(
            Deadline.status == "pending", Deadline.kind.in_((RAPPEL, RETARD))))).all():
        if row.payload.get("user_id") == ctx.sender:
            row.due_at = hours.next_allowed(datetime.fromisoformat(row.payload["instant"]), ctx.services.tz)
            moved += 1
    await ensure_weekly_digest(ctx, prof)
    ctx.reply(f"✅ Horaires de notification : **{hours}**. Les rappels de suivi et les récapitulatifs vous "
              "arrivent dans ces horaires ; red flags, alertes et délais restent immédiats."
              + (f" {moved} rappel(s) en attente suivent ces horaires." if moved else ""))


# --- what answers what (merged by bot/wiring.compose) -------------------------------------------------
DEADLINE_HANDLERS = {RAPPEL: remind, RETARD: remind, DIGEST_PATIENT: digest_patient, DIGEST_PRO: digest_pro}
POLL_HANDLERS = {"suiviq": which_voted}
REPLY_HANDLERS = {"suivi": reminder_answered}

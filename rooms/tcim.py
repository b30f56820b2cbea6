"""TCIM (issue 12): a flow on top of the request machinery (rooms.demandes), not a copy of it.

`!tcim demande` checks eligibility and creates an ordinary request of flow `tcim` (asked of the
médecins who signed the CPTS's TCIM protocol, through the ladder with the flow's délais); the
request's own steps (accept, `!rdv`, `!cr`) reach this module through the flow hooks at the bottom
(Services.flow_hooks). What TCIM adds (eligibility, confirmation, charter, interruption,
prescription) is a TcimRecord keyed by the request's id, encrypted at rest. Every step is one short
French line in the patient's room and an entry of the request's history (Demande.journal).
"""
from __future__ import annotations

import dataclasses
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select

from domain.demandes import Demande, annuler, cloturer
from domain.demandes import Etat as DemandeEtat
from domain.flows import Mode
from domain.markup import literal
from domain.parcours import Tcim
from domain.permissions import Action
from domain.tcim import (
    ALL_ITEMS,
    ETAT_TEXTE,
    Etat,
    TcimState,
    charter_item,
    eligibility_failures,
    missing_items,
    motif_libelle,
    video_link,
)
from domain.text import format_clock, format_french_datetime
from rooms import demandes, indemnites
from rooms.access import actor, authorize
from rooms.directory import names
from rooms.patients import cercle_members
from storage.models import Deadline, Patient, TcimRecord
from storage.models import Demande as DemandeRow

TIMER_KINDS = ("tcim.rappel", "tcim.retard")
_DATES = {f.name for f in dataclasses.fields(TcimState) if f.name.endswith("_at") or f.name == "creneau"}


def rules(ctx) -> Tcim:
    return ctx.services.catalogue["tcim"].tcim


def durees(ctx) -> str:
    """« médecin 15 min, infirmier·e 60 min » (data/flows.yaml durees_pec, S000 L1019)."""
    d = ctx.services.flows["tcim"].durees_pec
    return f"médecin {d['medecin_generaliste'] // timedelta(minutes=1)} min, infirmier·e {d['infirmier'] // timedelta(minutes=1)} min"


# --- the record ------------------------------------------------------------------------------------
def _purpose(demande_id: int) -> str:
    return f"tcim:{demande_id}"


def read(ctx, rec: TcimRecord) -> TcimState:
    data = ctx.store.cipher.decrypt_json(rec.data_enc, _purpose(rec.demande_id))
    for key in _DATES:
        if data.get(key):
            data[key] = datetime.fromisoformat(data[key])
    data["etat"] = Etat(data["etat"])
    return TcimState(**data)


def write(ctx, rec: TcimRecord, st: TcimState) -> None:
    data = dataclasses.asdict(st)
    for key in _DATES:
        if data.get(key):
            data[key] = data[key].isoformat()
    rec.data_enc = ctx.store.cipher.encrypt_json(data, _purpose(rec.demande_id))
    rec.etat, rec.medecin, rec.infirmier = st.etat.value, st.medecin, st.infirmier


async def record_of(ctx, row: DemandeRow) -> TcimRecord | None:
    return await ctx.session.scalar(select(TcimRecord).where(TcimRecord.demande_id == row.id))


class Tc:
    """One TCIM being acted on: its request (row, domain object) and its record (row, state)."""

    def __init__(self, ctx, patient: Patient, row: DemandeRow, d: Demande, rec: TcimRecord, st: TcimState):
        self.ctx, self.patient, self.row, self.d, self.rec, self.st = ctx, patient, row, d, rec, st

    @property
    def ref(self) -> str:
        return f"tcim:{self.row.id}"

    @property
    def n(self) -> str:
        return f"TCIM n°{self.d.numero}"

    def log(self, action: str, detail: str = "") -> None:
        """The request's history (Demande.journal) gets every TCIM step."""
        self.d.noter(self.ctx.now, self.ctx.sender if self.ctx.room_kind != "timer" else None, f"tcim:{action}", detail)

    def save(self) -> None:
        write(self.ctx, self.rec, self.st)
        demandes.write(self.ctx.store.cipher, self.row, self.d)

    async def say(self, text: str, *users: str) -> None:
        """One line in the patient's room, mentioning `users`."""
        people = [u for u in dict.fromkeys(users) if u]
        noms = await names(self.ctx.session, people)
        tail = (" " + " ".join(people)) if people else ""
        mentions = {u: noms[u] for u in people}
        if self.ctx.command is not None and self.ctx.room_id == self.patient.room_id:
            self.ctx.reply(text + tail, mentions=mentions)  # the answer to the command typed here
        else:
            self.ctx.send(self.patient.room_id, text + tail, mentions=mentions)


async def load(ctx, patient: Patient, row: DemandeRow) -> Tc:
    rec = await record_of(ctx, row)
    if rec is None:
        ctx.refuse(f"la demande n°{row.numero} n'est pas une TCIM", usage=False)
    return Tc(ctx, patient, row, demandes.read(ctx.store.cipher, row), rec, read(ctx, rec))


async def resolve(ctx, patient: Patient, ref) -> Tc:
    """The TCIM a `!tcim …` command is about: by number, or the only open one of the room."""
    if ref is not None:
        code, numero = ref
        if code and code != patient.code:
            ctx.refuse("donnez le numéro d'une TCIM de ce salon")
        row = await demandes.find(ctx.session, patient.room_id, numero)
        if row is None:
            ctx.refuse(f"demande « n°{numero} » inconnue")
        return await load(ctx, patient, row)
    recs = (await ctx.session.scalars(select(TcimRecord).where(
        TcimRecord.patient_code == patient.code,
        TcimRecord.etat.not_in((Etat.CLOSE.value, Etat.INTERROMPUE.value))).order_by(TcimRecord.id))).all()
    if not recs:
        ctx.refuse("aucune TCIM en cours dans ce salon", usage=False)
    if len(recs) > 1:
        rows = [await ctx.session.get(DemandeRow, r.demande_id) for r in recs]
        ctx.refuse("plusieurs TCIM en cours (" + ", ".join(f"n°{r.numero}" for r in rows) + ") : précisez laquelle")
    return await load(ctx, patient, await ctx.session.get(DemandeRow, recs[0].demande_id))


def _refuse_if(ctx, error: str | None, tc: Tc) -> None:
    if error:
        ctx.refuse(f"{tc.n} : {error}.", usage=False)


# --- ledger (issue 14 prices them; S000 L927-930) -----------------------------------------------------
async def _act(tc: Tc, kind: str, user: str, **criteria: bool) -> None:
    """One ledger line per TCIM and kind (rooms.indemnites: idempotent, priced at once); a criterion
    is only ever turned on, and the line is priced again when it is."""
    await indemnites.record(tc.ctx, user_id=user, kind=kind, ref=tc.ref, patient_code=tc.patient.code,
                            parcours="tcim", flow="tcim", demande=f"demande:{tc.row.id}")
    for critere in (name for name, met in criteria.items() if met):
        await indemnites.add_criterion(tc.ctx, tc.ref, critere, user_id=user, kinds=(kind,))


# --- timers: rows, rescheduled when the slot moves ---------------------------------------------------
async def _schedule(ctx, kind: str, ref: str, due: datetime, payload: dict) -> None:
    existing = await ctx.session.scalar(select(Deadline).where(Deadline.kind == kind, Deadline.ref == ref))
    if existing is None:
        await ctx.services.store.add_deadline(kind, ref, due, ctx.now, payload=payload, session=ctx.session)
    else:  # one row per (kind, ref): a new slot re-arms it
        existing.status, existing.due_at, existing.payload, existing.fired_at = "pending", due, payload, None


async def _cancel_timers(tc: Tc) -> None:
    await tc.ctx.services.store.cancel_deadlines(tc.ref, TIMER_KINDS, session=tc.ctx.session)


# --- use cases ---------------------------------------------------------------------------------------
async def request(ctx, patient: Patient, *, motif: str, sans_mt: bool, deplacement_possible: bool,
                  commentaire: str, infirmier: str | None) -> None:
    """`!tcim demande`: eligibility asked and recorded (S000 L1000-1002), then a request of flow
    `tcim` to the protocol's médecins. A failed criterion creates nothing."""
    probe = Demande(numero=0, flow="tcim", demandeur=ctx.sender, created_at=ctx.now, delai_reponse=None)
    await authorize(ctx, Action.TCIM_DEMANDE, patient, probe)  # who may ask does not depend on the request
    r = rules(ctx)
    failed = eligibility_failures(r, sans_mt=sans_mt, deplacement_possible=deplacement_possible)
    if failed:
        ctx.refuse("⛔ TCIM impossible : le patient doit " + " ; et ".join(f"« {c} »" for c in failed)
                   + " (critères d'inclusion du protocole TCIM). Rien n'a été créé.", usage=False)
    me = await actor(ctx, patient, ctx.sender)
    nurse = ctx.sender if (infirmier is None and me.profession == "infirmier") else infirmier
    if nurse is None:
        ctx.refuse("précisez l'infirmier·e qui sera auprès du patient : infirmier=<personne>")
    prof = await ctx.services.directory.get(ctx.session, nurse)
    if prof is None or prof.profession != "infirmier":
        ctx.refuse(f"« {literal(prof.display_name if prof else nurse)} » n'est pas infirmier·e dans l'annuaire")
    if nurse not in {m.user_id for m in await cercle_members(ctx.session, patient.code)}:
        ctx.refuse(f"{literal(prof.display_name)} ne fait pas partie du cercle : ajoutez-la ou le d'abord "
                   "(`!cercle ajouter`)", usage=False)
    flow = ctx.services.flows["tcim"]
    row, d = await demandes.create(ctx, patient, flow, commentaire=commentaire, motif=motif,
                                   cible_profession=flow.cible_profession,
                                   pour_compte_de=nurse if nurse != ctx.sender else None)
    base = ctx.services.tcim.video_base
    st = TcimState(motif=motif, sans_mt=sans_mt, deplacement_possible=deplacement_possible, infirmier=nurse,
                   lien=video_link(base, secrets.token_urlsafe(16)))
    rec = TcimRecord(demande_id=row.id, patient_code=patient.code, etat=st.etat.value, infirmier=nurse,
                     created_at=ctx.now, data_enc=b"")
    ctx.session.add(rec)
    tc = Tc(ctx, patient, row, d, rec, st)
    tc.log("eligibilite", "sans médecin traitant disponible : oui ; déplacement au cabinet impossible : oui")
    tc.save()
    echeance = format_french_datetime(d.echeance_reponse, ctx.services.tz, now=ctx.now)
    noms = await names(ctx.session, [nurse])
    ctx.reply(f"🩺 **{tc.n}** demandée ({motif_libelle(r, motif)}), infirmier·e : {noms[nurse]}. "
              f"Éligibilité notée : pas de médecin traitant disponible, déplacement au cabinet impossible. "
              f"Les médecins signataires du protocole TCIM sont sollicités ; réponse attendue avant {echeance}. "
              f"{flow.note_demande or ''}")


async def confirm(ctx, patient: Patient, ref) -> None:
    tc = await resolve(ctx, patient, ref)
    await authorize(ctx, Action.TCIM_CONFIRMER, patient, tc.d)
    _refuse_if(ctx, tc.st.confirmer(ctx.sender, ctx.now), tc)
    await _act(tc, "tcim_infirmier", ctx.sender)
    s = ctx.services.tcim
    rdv = tc.d.rdv
    payload = {"room_id": patient.room_id}
    if rdv and rdv.debut:
        if rdv.debut - s.reminder_before > ctx.now:
            await _schedule(ctx, "tcim.rappel", tc.ref, rdv.debut - s.reminder_before, payload)
        await _schedule(ctx, "tcim.retard", tc.ref, (rdv.fin or rdv.debut) + s.late_after, payload)
    tc.log("confirmation", rdv.decrire() if rdv else "")
    tc.save()
    noms = await names(ctx.session, [ctx.sender])
    await tc.say(f"✅ {tc.n} : créneau confirmé par {noms[ctx.sender]} : {literal(rdv.decrire() if rdv else '?')}. "
                 f"Durées prévues : {durees(ctx)}. Lien de la visio : {tc.st.lien} . "
                 "Avant de démarrer, le médecin coche la charte (`!tcim charte …`) puis `!tcim debut`.",
                 tc.st.medecin, tc.st.infirmier)


async def propose(ctx, patient: Patient, ref, slot_text: str) -> None:
    tc = await resolve(ctx, patient, ref)
    await authorize(ctx, Action.TCIM_PROPOSER, patient, tc.d)
    _refuse_if(ctx, tc.st.contre_proposer(slot_text), tc)
    await _cancel_timers(tc)
    tc.log("contre_proposition", slot_text)
    tc.save()
    noms = await names(ctx.session, [ctx.sender])
    await tc.say(f"🔁 {tc.n} : {noms[ctx.sender]} propose un autre créneau : {literal(slot_text)}. "
                 f"Médecin : fixez-le avec `!rdv {tc.d.numero} <horaire> teleconsultation`.", tc.st.medecin)


def _codes(ctx, words: str | None) -> list[str]:
    r = rules(ctx)
    codes = []
    for word in (words or "").replace(",", " ").split():
        if word.lower() in ALL_ITEMS:
            codes += [i.code for i in r.charte_avant]
            continue
        code = charter_item(r, word)
        if code is None:
            ctx.refuse(f"« {literal(word)} » n'est pas un élément de la charte (éléments : "
                       + ", ".join(i.code for i in r.charte_avant) + ", ou « tout »)")
        codes.append(code)
    return codes


def _missing_text(ctx, ticked) -> str:
    lines = []
    for item in missing_items(rules(ctx), ticked):
        ref = f" ({item.reference})" if item.reference else ""
        lines.append(f"- `{item.code}` : {item.libelle}{ref}")
    return "\n".join(lines)


async def tick(ctx, patient: Patient, ref, words: str) -> None:
    tc = await resolve(ctx, patient, ref)
    await authorize(ctx, Action.TCIM_CHARTE, patient, tc.d)
    codes = _codes(ctx, words)
    _refuse_if(ctx, tc.st.cocher(codes), tc)
    tc.log("charte", ", ".join(codes))
    tc.save()
    missing = _missing_text(ctx, tc.st.charte)
    ctx.reply(f"☑️ Charte de la {tc.n} : " + ", ".join(tc.st.charte) + " cochés."
              + (f" Reste à cocher :\n{missing}" if missing else " Tout est coché : `!tcim debut` pour démarrer."))


async def start(ctx, patient: Patient, ref, words: str | None) -> None:
    """`!tcim debut`: refused, with what is missing, until the four charter items are ticked
    (S000 L963-968). Items typed with it are ticked first (and kept even if something is missing)."""
    tc = await resolve(ctx, patient, ref)
    await authorize(ctx, Action.TCIM_DEBUT, patient, tc.d)
    codes = _codes(ctx, words)
    if codes:
        _refuse_if(ctx, tc.st.cocher(codes), tc)
        tc.log("charte", ", ".join(codes))
    error = tc.st.demarrer(rules(ctx), ctx.now)
    if error == "charte":
        tc.log("debut_refuse", "charte incomplète")
        tc.save()
        ctx.reply(f"⛔ Je ne démarre pas la {tc.n} : la charte de téléconsultation n'est pas complète. "
                  f"Manque :\n{_missing_text(ctx, tc.st.charte)}\n"
                  "Cochez avec `!tcim charte <éléments>` (ou `!tcim debut <éléments>`).")
        return
    _refuse_if(ctx, error, tc)
    await tc.ctx.services.store.cancel_deadlines(tc.ref, ("tcim.retard", "tcim.rappel"), session=ctx.session)
    tc.log("debut")
    tc.save()
    await tc.say(f"▶️ {tc.n} démarrée à {format_clock(ctx.now.astimezone(ctx.services.tz).time())} "
                 "(charte vérifiée : identité, consentement oral, capacité à communiquer, confidentialité). "
                 "À la fin : `!tcim fin lieu=<lieu> presents=<personnes>`.", tc.st.infirmier)


async def end(ctx, patient: Patient, ref, lieu: str | None, presents: str | None) -> None:
    tc = await resolve(ctx, patient, ref)
    await authorize(ctx, Action.TCIM_FIN, patient, tc.d)
    _refuse_if(ctx, tc.st.terminer(ctx.now, lieu, presents), tc)
    tc.log("fin", f"lieu : {lieu or 'non renseigné'} ; présents : {presents or 'non renseignés'}")
    tc.save()
    minutes = round((tc.st.fin_at - tc.st.debut_at).total_seconds() / 60)
    fin = rules(ctx).charte_fin
    await tc.say(f"⏹️ {tc.n} terminée ({minutes} min). {fin[0].libelle.capitalize()} : {literal(lieu or 'non renseignée')} ; "
                 f"présents : {literal(presents or 'non renseignés')}. Reste : le compte-rendu du médecin "
                 f"(`!cr {tc.d.numero} …`) et la réception de l'ordonnance (`!tcim ordonnance recue`).",
                 tc.st.infirmier)


async def interrupt(ctx, patient: Patient, ref, motif: str) -> None:
    """Either side; traced with who, when and why (S000 L977-981); the request is cancelled."""
    tc = await resolve(ctx, patient, ref)
    await authorize(ctx, Action.TCIM_INTERROMPRE, patient, tc.d)
    _refuse_if(ctx, tc.st.interrompre(ctx.sender, motif, ctx.now), tc)
    if tc.d.etat not in (DemandeEtat.CLOTUREE, DemandeEtat.ANNULEE):
        annuler(tc.d, ctx.sender, f"TCIM interrompue : {motif}", ctx.now)
        await demandes.close_notices(ctx, patient, tc.d)  # the signatories asked in their direct chat
    await indemnites.call_off(ctx, tc.ref)
    await ctx.services.store.cancel_deadlines(f"demande:{tc.row.id}", session=ctx.session)
    await _cancel_timers(tc)
    tc.log("interruption", motif)
    tc.save()
    noms = await names(ctx.session, [ctx.sender])
    quand = format_french_datetime(ctx.now, ctx.services.tz, now=ctx.now)
    await tc.say(f"⏸️ {tc.n} interrompue par {noms[ctx.sender]} ({quand}) : {literal(motif)}. "
                 "Proposez au patient une prise en charge mieux adaptée : soin non programmé "
                 "(`!dec medecin snp …`) ou visite à domicile (`!dec medecin vad …`).",
                 *[u for u in (tc.st.medecin, tc.st.infirmier) if u != ctx.sender])


async def prescription_received(ctx, patient: Patient, ref) -> None:
    tc = await resolve(ctx, patient, ref)
    await authorize(ctx, Action.TCIM_ORDONNANCE, patient, tc.d)
    _refuse_if(ctx, tc.st.ordonnance_recue(ctx.now), tc)
    await _act(tc, "tcim_infirmier", ctx.sender, ordonnance_recue=True)
    tc.log("ordonnance_recue")
    noms = await names(ctx.session, [ctx.sender])
    await tc.say(f"💊 {tc.n} : ordonnance reçue par {noms[ctx.sender]}.")
    await _close_if_complete(tc)
    tc.save()


async def _close_if_complete(tc: Tc) -> None:
    if not tc.st.clore_si_complete(tc.ctx.now):
        if tc.st.etat is Etat.REALISEE:
            reste = "la réception de l'ordonnance" if tc.st.cr_at else "le compte-rendu du médecin"
            await tc.say(f"{tc.n} : il reste {reste} pour la clore.")
        return
    if tc.d.etat not in (DemandeEtat.CLOTUREE, DemandeEtat.ANNULEE):
        cloturer(tc.d, tc.ctx.sender, tc.ctx.now)
    await tc.ctx.services.store.cancel_deadlines(f"demande:{tc.row.id}", session=tc.ctx.session)
    await _cancel_timers(tc)
    tc.log("close")
    cpam = " ; ".join(rules(tc.ctx).cpam)
    await tc.say(f"✔️ {tc.n} close : compte-rendu posté et ordonnance reçue. Pour information, tarifs de "
                 f"l'Assurance Maladie (facturés à part, jamais ajoutés aux indemnités CPTS) : {cpam}.")


async def show(ctx, patient: Patient, ref) -> None:
    """`!tcim voir`: state and history of the room's TCIMs (or of one)."""
    if ref is not None:
        tcs = [await resolve(ctx, patient, ref)]
    else:
        recs = (await ctx.session.scalars(select(TcimRecord).where(TcimRecord.patient_code == patient.code)
                                          .order_by(TcimRecord.id))).all()
        tcs = [await load(ctx, patient, await ctx.session.get(DemandeRow, r.demande_id)) for r in recs]
    if not tcs:
        ctx.reply("Aucune TCIM dans ce salon.")
        return
    tz, lines = ctx.services.tz, []
    for tc in tcs:
        st = tc.st
        noms = await names(ctx.session, {st.medecin, st.infirmier, *(e.par for e in tc.d.journal)})
        medecin = noms.get(st.medecin, "pas encore de médecin")
        lines.append(f"**{tc.n}** · {ETAT_TEXTE[st.etat]} · médecin : {medecin} · infirmier·e : {noms[st.infirmier]}"
                     + (f" · lien : {st.lien}" if st.etat not in (Etat.CLOSE, Etat.INTERROMPUE) else ""))
        for e in tc.d.journal:
            label = HISTORY.get(e.action)
            if label is None:
                continue
            who = noms.get(e.par, "Cercle") if e.par else "Cercle"
            quand = format_french_datetime(e.at, tz, now=ctx.now)
            detail = f" : {literal(e.detail)}" if e.detail and e.action.startswith(("tcim:", "rdv")) else ""
            lines.append(f"- {quand} · {who} · {label}{detail}")
    ctx.reply("\n".join(lines))


# The request's history as `!tcim voir` says it (Demande.journal actions; the others are not shown).
HISTORY = {
    "creation": "demande créée", "palier:pool": "proposée aux médecins signataires", "palier:relance": "relance",
    "palier:escalade": "sans médecin : coordinateurs prévenus", "refus": "refus d'un médecin",
    "acceptation": "acceptée", "rdv": "rendez-vous donné", "rdv_modifie": "rendez-vous déplacé",
    "cr": "compte-rendu posté", "cloture": "demande clôturée", "annulation": "demande annulée",
    "tcim:eligibilite": "éligibilité", "tcim:creneau": "créneau proposé par le médecin",
    "tcim:contre_proposition": "autre créneau proposé par l'infirmier·e", "tcim:compte_rendu": "compte-rendu du médecin",
    "tcim:confirmation": "créneau confirmé", "tcim:charte": "charte cochée", "tcim:debut_refuse": "début refusé",
    "tcim:debut": "téléconsultation démarrée", "tcim:fin": "téléconsultation terminée",
    "tcim:interruption": "TCIM interrompue", "tcim:ordonnance_recue": "ordonnance reçue",
    "tcim:retard": "créneau passé sans début", "tcim:close": "TCIM close",
}


# --- hooks: the request's own steps, for a TCIM (Services.flow_hooks) ---------------------------------
async def _hooked(ctx, patient: Patient, row: DemandeRow, d: Demande) -> Tc | None:
    rec = await record_of(ctx, row)
    return None if rec is None else Tc(ctx, patient, row, d, rec, read(ctx, rec))


async def on_accepted(ctx, patient: Patient, row: DemandeRow, d: Demande) -> None:
    tc = await _hooked(ctx, patient, row, d)
    if tc is None:
        return
    tc.st.accepter(d.acceptee_par)
    await _act(tc, "tcim_medecin", d.acceptee_par)
    tc.save()
    noms = await names(ctx.session, [d.acceptee_par])
    await tc.say(f"🩺 {tc.n} acceptée par {noms[d.acceptee_par]}. Médecin : proposez le créneau avec "
                 f"`!rdv {d.numero} <horaire> teleconsultation`.", d.acceptee_par, tc.st.infirmier)


async def on_rdv(ctx, patient: Patient, row: DemandeRow, d: Demande) -> None:
    tc = await _hooked(ctx, patient, row, d)
    if tc is None:
        return
    if d.rdv.mode is not Mode.TELECONSULTATION:
        ctx.refuse(f"une TCIM se fait en téléconsultation : `!rdv {d.numero} <horaire> teleconsultation`", usage=False)
    _refuse_if(ctx, tc.st.proposer_creneau(d.rdv.debut, d.rdv.decrire()), tc)
    await _act(tc, "tcim_medecin", d.acceptee_par, rdv=True)
    await _cancel_timers(tc)
    tc.log("creneau", d.rdv.decrire())
    tc.save()
    await tc.say(f"📅 {tc.n} : créneau proposé ({literal(d.rdv.decrire())}). Infirmier·e : `!tcim confirmer`, "
                 "ou `!tcim proposer <horaire>` pour un autre créneau.", tc.st.infirmier)


async def on_cr(ctx, patient: Patient, row: DemandeRow, d: Demande) -> None:
    tc = await _hooked(ctx, patient, row, d)
    if tc is None:
        return
    _refuse_if(ctx, tc.st.poster_cr(ctx.now), tc)
    await _act(tc, "tcim_medecin", d.acceptee_par, cr=True)
    tc.log("compte_rendu")
    await _close_if_complete(tc)
    tc.save()


async def on_closed(ctx, patient: Patient, row: DemandeRow, d: Demande) -> None:
    """`!cloturer` or `!annuler` on the request itself: the TCIM follows, with no timer left."""
    tc = await _hooked(ctx, patient, row, d)
    if tc is None or tc.st.etat in (Etat.CLOSE, Etat.INTERROMPUE):
        return
    if d.etat is not DemandeEtat.ANNULEE and tc.st.etat is not Etat.REALISEE:
        # « close » counts as a TCIM done (indicators): only once the teleconsultation took place.
        ctx.refuse(f"{tc.n} : la téléconsultation n'a pas eu lieu ({ETAT_TEXTE[tc.st.etat]}). Elle se clôt "
                   "d'elle-même après le compte-rendu et l'ordonnance reçue ; pour l'arrêter : "
                   "`!tcim interrompre <motif>`.", usage=False)
    if d.etat is DemandeEtat.ANNULEE:
        tc.st.interrompre(ctx.sender, d.motif_annulation or "demande annulée", ctx.now)
        await indemnites.call_off(ctx, tc.ref)
    else:
        tc.st.etat, tc.st.closed_at = Etat.CLOSE, ctx.now
    await _cancel_timers(tc)
    tc.save()


async def fire(ctx, deadline) -> None:
    """The reminder before the slot, and the escalation when it passed with no `!tcim debut`."""
    row = await ctx.session.get(DemandeRow, int(deadline.ref.split(":")[1]))
    patient = await ctx.session.get(Patient, row.patient_code) if row else None
    if patient is None:
        return
    tc = await _hooked(ctx, patient, row, demandes.read(ctx.store.cipher, row))
    if tc is None or tc.st.etat is not Etat.CONFIRMEE:
        return
    quand = literal(tc.d.rdv.decrire()) if tc.d.rdv else "?"
    if deadline.kind == "tcim.rappel":
        missing = missing_items(rules(ctx), tc.st.charte)
        charte = (" Charte à cocher avant de démarrer : " + ", ".join(i.code for i in missing) + ".") if missing else ""
        await tc.say(f"⏰ Rappel {tc.n} : {quand}. Lien de la visio : {tc.st.lien} .{charte}",
                     tc.st.medecin, tc.st.infirmier)
        return
    if tc.st.retard_signale:
        return
    tc.st.retard_signale = True
    tc.log("retard", "créneau passé sans début")
    tc.save()
    await tc.say(f"⚠️ {tc.n} : le créneau ({quand}) est passé et la téléconsultation n'a pas démarré "
                 "(`!tcim debut`). Si elle n'a pas lieu : `!tcim interrompre <motif>`, ou un nouveau `!rdv`.",
                 tc.st.medecin, tc.st.infirmier)
    ctx.to_coordinators(f"⚠️ TCIM {patient.code}/{tc.d.numero} : créneau passé sans début de téléconsultation. "
                        "Médecin et infirmier·e ont été relancés dans le cercle.")


FLOW_HOOKS = {("tcim", "accepted"): on_accepted, ("tcim", "rdv"): on_rdv, ("tcim", "cr"): on_cr,
              ("tcim", "closed"): on_closed, ("tcim", "cancelled"): on_closed}
DEADLINE_HANDLERS = {kind: fire for kind in TIMER_KINDS}

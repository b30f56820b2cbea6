"""The directory, managed by the coordinators: annuaire ajouter | modifier | retirer | voir."""
from __future__ import annotations

from datetime import datetime, time, timedelta

from commands.arguments import Choice, ParseContext, Token, Word
from commands.people import CalendarDate, PersonRef
from commands.registry import COORDINATION, CommandGroup, Option, Param
from domain.markup import literal
from domain.text import normalize
from rooms import indemnites
from rooms.directory import find_profession, profession_label, professions, upsert_professional
from storage.models import Professional


def ctx_parse(ctx) -> ParseContext:
    return ParseContext(now=ctx.now, tz=ctx.services.tz)


class ListOfWords(Word):
    placeholder = "<a,b>"
    description = "valeurs séparées par des virgules"


def _roles(text: str | None) -> list[str] | None:
    if text is None:
        return None
    allowed = ("coordinateur", "referent", "vigie_referent", "structure", "operateur_snp", "secretaire", "tcim")
    roles = [r.strip() for r in text.split(",") if r.strip()]
    for r in roles:
        if r.split(":")[0] not in allowed:
            raise ValueError(f"rôle inconnu « {literal(r)} » (rôles : coordinateur, referent:<parcours>, vigie_referent, "
                             "structure:<sport_sante|maison_des_femmes|etp>, operateur_snp, secretaire:<@professionnel>, tcim)")
    return roles


def _with_tcim(roles: list[str], tcim: str | None) -> list[str]:
    """`tcim=oui|non`: the role `tcim` marks a signatory of the CPTS's TCIM protocol (S000 L1013, L1025)."""
    if tcim is None:
        return roles
    kept = [r for r in roles if r != "tcim"]
    return [*kept, "tcim"] if tcim == "oui" else kept


def describe(p: Professional) -> str:
    parts = [f"**{literal(p.display_name)}** ({profession_label(p.profession)}) `{p.user_id}`"]
    if p.communes:
        parts.append("communes : " + literal(", ".join(p.communes)))
    if p.roles:
        parts.append("rôles : " + literal(", ".join(p.roles)))
    parts.append("cotisation à jour jusqu'au " + p.cotisation_until.strftime("%d/%m/%Y") if p.cotisation_until
                 else "cotisation : non renseignée")
    return " · ".join(parts)


group = CommandGroup()


@group.command(
    "absence", aliases=["absent", "conges", "congés"],
    summary="déclarer une absence : les demandes passent alors aux collègues sans attendre",
    params=[Param("debut", Word(placeholder="<JJ/MM/AAAA|aucune>"), help="premier jour d'absence, ou « aucune »"),
            Param("fin", CalendarDate(), optional=True, help="dernier jour d'absence (inclus)")],
    examples=["!absence 12/03/2027 20/03/2027", "!absence aucune"], category="Général",
)
async def absence(ctx, debut, fin=None):
    me = await ctx.services.directory.get(ctx.session, ctx.sender)
    if normalize(debut) in ("aucune", "aucun", "fin", "retour"):
        me.absences = []
        ctx.reply("✅ Absences effacées : vous recevez de nouveau les demandes.")
        return

    first, _ = CalendarDate().parse([Token(debut)], 0, ctx_parse(ctx))
    last = fin or first
    if last < first:
        ctx.refuse("le dernier jour précède le premier")
    tz = ctx.services.tz
    start = datetime.combine(first, time(0, 0), tzinfo=tz)
    end = datetime.combine(last + timedelta(days=1), time(0, 0), tzinfo=tz)
    me.absences = [*(me.absences or []), [start.isoformat(), end.isoformat()]]
    ctx.reply(f"✅ Absence notée du {first:%d/%m/%Y} au {last:%d/%m/%Y} inclus : pendant ce temps, les "
              "demandes qui vous seraient adressées en premier passent directement aux collègues.")


@group.command(
    "annuaire", summary="gérer l'annuaire des professionnels de la CPTS (coordinateurs)",
    params=[Param("action", Choice({"voir": ["liste", "chercher"], "ajouter": ["ajout"], "modifier": ["maj"],
                                    "retirer": ["supprimer", "enlever"]})),
            Param("personne", PersonRef(), optional=True)],
    options=[Option("nom", Word(placeholder='"<nom>"'), "nom affiché, entre guillemets"),
             Option("profession", Word(placeholder="<profession>"), "profession : " + ", ".join(professions())),
             Option("communes", ListOfWords(), "communes d'exercice, séparées par des virgules"),
             Option("roles", ListOfWords(), "coordinateur, referent:<parcours>, operateur_snp, secretaire:<@pro>, tcim"),
             Option("cotisation", CalendarDate(), "cotisation à jour jusqu'au JJ/MM/AAAA"),
             Option("tcim", Choice({"oui": ["o", "signe", "signé"], "non": ["n"]}),
                    "oui : médecin signataire du protocole TCIM de la CPTS (sollicité pour les TCIM)")],
    examples=['!annuaire ajouter @ide.petit:cpts.fr nom="Julie Petit" profession=infirmier communes=Brétigny-sur-Orge',
              "!annuaire modifier @dr.martin:cpts.fr tcim=oui", "!annuaire voir Petit"],
    scopes=[COORDINATION], requires="coordinateur", category="Coordination",
)
async def annuaire(ctx, action, personne=None, nom=None, profession=None, communes=None, roles=None,
                   cotisation=None, tcim=None):
    if action == "voir":
        await _voir(ctx, personne)
        return
    if personne is None or not personne.startswith("@"):
        ctx.refuse("donnez l'identifiant Matrix du professionnel (@nom:serveur)")
    prof_code = None
    if profession is not None:
        p = find_profession(profession)
        if p is None:
            ctx.refuse(f"profession inconnue : « {literal(profession)} » (professions : {', '.join(professions())})")
        prof_code = p.code
    try:
        role_list = _roles(roles)
    except ValueError as e:
        ctx.refuse(str(e))
    until = datetime.combine(cotisation, time(23, 59), tzinfo=ctx.services.tz) if cotisation else None
    existing = await ctx.session.get(Professional, personne)
    if action == "ajouter":
        if existing is not None and existing.active:
            ctx.refuse(f"{personne} est déjà dans l'annuaire : utilisez `!annuaire modifier`", usage=False)
        if not nom or not prof_code:
            ctx.refuse("pour ajouter, `nom=` et `profession=` sont obligatoires")
        prof = await upsert_professional(ctx.session, user_id=personne, display_name=nom, profession=prof_code,
                                         roles=_with_tcim(role_list or [], tcim), now=ctx.now, cpts=ctx.services.cpts_name,
                                         communes=[c.strip() for c in (communes or "").split(",") if c.strip()],
                                         cotisation_until=until)
        ctx.reply(f"✅ Ajouté : {describe(prof)}")
        return
    if existing is None or not existing.active:
        ctx.refuse(f"{personne} n'est pas dans l'annuaire", usage=False)
    if action == "retirer":
        existing.active = False
        ctx.reply(f"✅ {literal(existing.display_name)} est retiré·e de l'annuaire (ses actes passés restent au registre).")
        return
    if tcim is not None:
        role_list = _with_tcim(existing.roles if role_list is None else role_list, tcim)
    _modify(existing, nom=nom, profession=prof_code, communes=communes, roles=role_list, until=until)
    note = ""
    if until or prof_code:  # the cotisation or the profession decide indemnities: price the lines again
        await ctx.session.flush()
        if await indemnites.reprice_user(ctx, personne):
            note = "\nIndemnités recalculées (les bordereaux déjà validés reçoivent une correction)."
    ctx.reply(f"✅ Modifié : {describe(existing)}{note}")


async def _voir(ctx, personne: str | None) -> None:
    if personne:
        try:
            found = await ctx.services.directory.search(ctx.session, personne)
        except ValueError as e:
            ctx.refuse(str(e))
    else:
        found = await ctx.services.directory.members(ctx.session)
    if not found:
        ctx.reply("Aucun professionnel ne correspond." if personne else "L'annuaire est vide.")
        return
    ctx.reply("\n".join(f"- {describe(p)}" for p in found[:50]) +
              (f"\n\n… et {len(found) - 50} autres" if len(found) > 50 else ""))


def _modify(existing: Professional, *, nom, profession, communes, roles, until) -> None:
    """Only what was given changes."""
    if nom:
        existing.display_name = nom
    if profession:
        existing.profession = profession
    if communes is not None:
        existing.communes = [c.strip() for c in communes.split(",") if c.strip()]
    if roles is not None:
        existing.roles = roles
    if until:
        existing.cotisation_until = until

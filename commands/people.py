"""Argument types that need the directory or patients: resolved in handlers, parsed here."""
from __future__ import annotations

import re
from datetime import date

from commands.arguments import ArgType, ArgumentError, ParseContext, Token
from domain.markup import literal


class PersonRef(ArgType):
    """A professional: Matrix id (@nom:serveur) or a name of at least 3 letters (quote several words)."""

    placeholder = "<personne>"
    description = "un·e professionnel·le : @identifiant:serveur, ou son nom (au moins 3 lettres)"
    examples = ["@dr.martin:cpts.fr", "Martin", '"Anne Bernard"']

    def parse(self, tokens: list[Token], pos: int, ctx: ParseContext):
        text = tokens[pos].text.strip()
        if text.startswith("@"):
            if not re.fullmatch(r"@[^:\s]+:\S+", text):
                raise ArgumentError(f"« {literal(text)} » n'est pas un identifiant Matrix complet (forme @nom:serveur)")
            return text, pos + 1
        letters = re.sub(r"[^\w]", "", text)
        if len(letters) < 3:
            raise ArgumentError(f"« {literal(text)} » : donnez au moins 3 lettres du nom, ou l'identifiant @nom:serveur")
        return text, pos + 1


class PatientCode(ArgType):
    placeholder = "<P-XXXX>"
    description = "le code pseudonyme du patient, par exemple P-7K3Q"
    examples = ["P-7K3Q"]

    def parse(self, tokens, pos, ctx):
        text = tokens[pos].text.strip().upper()
        if not re.fullmatch(r"P-[2-9A-HJ-NP-Z]{4}", text):
            raise ArgumentError(f"« {literal(tokens[pos].text)} » n'est pas un code patient (forme P-XXXX, par exemple P-7K3Q)")
        return text, pos + 1


class CalendarDate(ArgType):
    """A full date JJ/MM/AAAA (no time): birth dates, membership end dates."""

    placeholder = "<JJ/MM/AAAA>"
    description = "date au format JJ/MM/AAAA"
    examples = ["31/12/2026"]

    def parse(self, tokens, pos, ctx):
        text = tokens[pos].text.strip()
        m = re.fullmatch(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})", text)
        if not m:
            raise ArgumentError(f"« {literal(text)} » : date attendue au format JJ/MM/AAAA, par exemple {self.examples[0]}")
        try:
            value = date(int(m[3]), int(m[2]), int(m[1]))
        except ValueError:
            raise ArgumentError(f"« {literal(text)} » n'est pas une date qui existe")
        self.check(value, text, ctx.now.astimezone(ctx.tz).date())
        return value, pos + 1

    def check(self, value: date, text: str, today: date) -> None:
        pass


class BirthDate(CalendarDate):
    description = "date de naissance, par exemple 12/03/1950"
    examples = ["12/03/1950"]

    def check(self, value, text, today):
        if value > today or value.year < today.year - 125:
            raise ArgumentError(f"« {literal(text)} » : date de naissance impossible")


class Phone(ArgType):
    placeholder = "<téléphone>"
    description = "numéro de téléphone, par exemple 06 12 34 56 78 ou +33612345678"
    examples = ["0612345678"]

    def parse(self, tokens, pos, ctx):
        raw = tokens[pos].text
        digits = re.sub(r"[\s.\-()]", "", raw)
        if re.fullmatch(r"0\d{9}", digits):
            return " ".join(digits[i:i + 2] for i in range(0, 10, 2)), pos + 1
        if re.fullmatch(r"\+\d{8,15}", digits):
            return digits, pos + 1
        raise ArgumentError(f"« {literal(raw)} » n'est pas un numéro de téléphone (10 chiffres, ou +33…)")


class PersonList(ArgType):
    """Several professionals separated by commas: pros=@a:s,@b:s or pros="Martin, Petit"."""

    placeholder = "<personnes>"
    description = "professionnel·le·s séparé·e·s par des virgules (@identifiants ou noms)"
    examples = ["@ide.petit:cpts.fr,@ph.moreau:cpts.fr"]

    def parse(self, tokens, pos, ctx):
        items = [t.strip() for t in tokens[pos].text.split(",") if t.strip()]
        if not items:
            raise ArgumentError("liste de professionnels vide")
        for item in items:
            PersonRef().parse([Token(item, False)], 0, ctx)
        return items, pos + 1

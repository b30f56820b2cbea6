"""`cercle` command line: run, up (local demo stack), status, backup, restore, identity restore."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import sys
from pathlib import Path

from bot.config import Config, ConfigError, load_config, write_config

log = logging.getLogger("cercle")

# Demo accounts of `cercle up`: (localpart, display name, profession, role)
DEMO_ACCOUNTS = [
    ("coordinatrice", "Claire Coordinatrice", "autre", "coordinateur"),
    ("dr.martin", "Dr Paul Martin", "medecin_generaliste", "professionnel"),
    ("dr.bernard", "Dr Anne Bernard", "medecin_generaliste", "professionnel"),
    ("ide.petit", "Julie Petit", "infirmier", "professionnel"),
    ("ide.durand", "Marc Durand", "infirmier", "professionnel"),
    ("sf.leroy", "Sophie Leroy", "sage_femme", "professionnel"),
    ("ph.moreau", "Luc Moreau", "pharmacien", "professionnel"),
    ("mk.simon", "Emma Simon", "masseur_kinesitherapeute", "professionnel"),
]


def _setup_logging(verbose: bool, fmt: str = "text") -> None:
    from bot.logs import setup_logging

    setup_logging(verbose, fmt)


DEMO_CLOCK_STATE = "demo_clock"


async def resume_demo_clock(store, speed: float | None, *, real_now=None):
    """The clock of `cercle up`: the demo clock saved in the bot's state, continued (never moved
    back), or a new one for --demo-speed, or the system clock. The clock in use is saved."""
    from domain.clock import ScaledClock, SystemClock

    clock = ScaledClock.resume(speed, await store.get_state(DEMO_CLOCK_STATE), real_now=real_now)
    if clock is None:
        return SystemClock()
    await store.set_state(DEMO_CLOCK_STATE, clock.state())
    return clock


async def _run_bot(config: Config, clock, on_ready=None, *, demo_speed: float | None = None) -> None:
    """Run the bot; `clock` None means the demo clock of `cercle up` (resumed from the bot's state).

    Order: the health endpoint first (a standby answers `standby` while it waits), then the
    instance lock (SQLite: refused if taken; PostgreSQL: wait for it), then the store and the bot.
    `on_ready(bot, http_url)` runs once the bot is started.
    """
    from bot.app import Bot
    from bot.health import OpsServer
    from bot.metrics import Metrics
    from storage.instance import InstanceLock

    metrics = Metrics()
    server = OpsServer(config.http, metrics) if config.http.listen else None
    http_url = await server.start() if server else None
    lock = None
    try:
        config.storage.data_dir.mkdir(parents=True, exist_ok=True)
        lock = await InstanceLock.acquire(config.storage.url(), config.matrix.user_id,
                                          on_wait=server.standby if server else None)
        await _serve(config, clock, on_ready, demo_speed, metrics, server, lock, http_url, Bot)
    finally:
        if lock is not None:
            await lock.release()
        if server:
            await server.stop()


async def _serve(config, clock, on_ready, demo_speed, metrics, server, lock, http_url, Bot) -> None:
    store = None
    if clock is None:
        from storage.repositories import open_store

        store = await open_store(config.storage.url(), config.storage.key_path())
        try:
            clock = await resume_demo_clock(store, demo_speed)
        except BaseException:
            await store.close()
            raise
    bot = await Bot.open(config, clock, store=store, metrics=metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.stop()))
    lost = asyncio.create_task(lock.watch())
    lost.add_done_callback(lambda t: None if t.cancelled() else asyncio.ensure_future(bot.stop()))
    try:
        runner = asyncio.create_task(bot.run())
        if server:
            server.serving(bot)
        if on_ready:
            await on_ready(bot, http_url)
        await runner
        if lost.done() and not lost.cancelled():
            raise SystemExit("cercle : verrou d'instance perdu, arrêt (le superviseur relance le bot, "
                             "qui attend son tour)")
    finally:
        lost.cancel()
        if server:
            server.stopping()
        await bot.close()


def cmd_run(args) -> int:
    from domain.clock import SystemClock
    from storage.private import tighten

    config = load_config(Path(args.config))
    _setup_logging(args.verbose, config.log.format)
    tighten(config.storage.data_dir)  # files an older run left readable by others
    if Path(args.config).stat().st_mode & 0o077:
        log.warning("%s contient le mot de passe du bot et reste lisible par d'autres comptes : chmod 600 %s",
                    args.config, args.config)
    asyncio.run(_run_bot(config, SystemClock()))
    return 0


def cmd_up(args) -> int:
    """Local Synapse + bot + demo accounts, all under one directory; a second run reuses it."""
    from bot.config import CptsConfig, MatrixConfig, StorageConfig
    from bot.local_synapse import SERVER_NAME, LocalSynapse
    from storage.private import private_dir, tighten

    data_dir = Path(args.data_dir).resolve()
    private_dir(data_dir)
    # What an older run left readable by others (Synapse's directory is tightened by prepare()).
    tighten(data_dir, data_dir / "cercle.toml", data_dir / "demo.json", recursive=False)
    tighten(data_dir / "bot")
    server = LocalSynapse.prepare(data_dir / "synapse", args.port)
    print(f"Démarrage de Synapse sur {server.url} …", flush=True)
    server.start()
    try:
        demo_path = data_dir / "demo.json"
        previous = json.loads(demo_path.read_text()) if demo_path.exists() else {}
        passwords = {a["user_id"]: a["password"] for a in previous.get("accounts", [])}
        config_path = data_dir / "cercle.toml"
        # The passwords are kept with the accounts (server.accounts_path), not only in demo.json:
        # a missing demo.json must not make `cercle up` print passwords the accounts do not have.
        bot_password = (load_config(config_path, environ={}).matrix.resolved_password() if config_path.exists()
                        else previous.get("bot_password") or secrets.token_urlsafe(18))
        bot_user, bot_password = server.ensure_account("cercle", bot_password, displayname="Cercle")
        accounts = []
        for localpart, name, profession, role in DEMO_ACCOUNTS:
            user_id, password = server.ensure_account(
                localpart, passwords.get(f"@{localpart}:{SERVER_NAME}"), displayname=name)
            accounts.append({"user_id": user_id, "password": password, "name": name,
                             "profession": profession, "role": role})
        if not config_path.exists():
            write_config(config_path, Config(
                matrix=MatrixConfig(homeserver=server.url, user_id=bot_user, password=bot_password),
                storage=StorageConfig(data_dir=data_dir / "bot"),
                cpts=CptsConfig(name="CPTS de démonstration")))
        config = load_config(config_path, environ={})
        # Health and metrics on a free loopback port unless the config names one (demo.json says which).
        http = config.http if config.http.listen else config.http.model_copy(update={"listen": "127.0.0.1:0"})
        config = config.model_copy(update={"matrix": config.matrix.model_copy(update={"homeserver": server.url}),
                                           "http": http})
        _setup_logging(args.verbose, config.log.format)

        async def on_ready(bot, http_url):
            from bot.coordination import ensure_coordinator_room
            from rooms.directory import seed_demo_directory

            await bot.synced_once.wait()
            await seed_demo_directory(bot.store, bot.clock, bot.config.cpts.name, accounts)
            coordinators = [a["user_id"] for a in accounts if a["role"] == "coordinateur"]
            room_id = await ensure_coordinator_room(bot, invite=coordinators)
            demo = {"homeserver": server.url, "bot": bot_user, "coordinator_room": room_id,
                    "bot_password": bot_password, "http": http_url,
                    "accounts": [{k: a[k] for k in ("user_id", "password", "profession", "role")} for a in accounts]}
            demo_path.write_text(json.dumps(demo, indent=2, ensure_ascii=False))
            demo_path.chmod(0o600)
            _print_welcome(server.url, bot_user, accounts, demo_path, bot.clock, bot.config.tz, http_url)

        asyncio.run(_run_bot(config, None, on_ready=on_ready, demo_speed=args.demo_speed))
    finally:
        server.stop()
        print("Cercle et Synapse arrêtés.")
    return 0


def _print_welcome(url, bot_user, accounts, demo_path, clock, tz, http_url=None) -> None:
    from domain.text import format_french_datetime

    print("\n" + "=" * 72)
    print("Cercle est prêt.")
    print(f"  Serveur Matrix : {url}")
    print(f"  Bot            : {bot_user}")
    speed = getattr(clock, "speed", None)
    if speed:
        print(f"  Horloge        : accélérée ×{speed:g} (démonstration), "
              f"heure de démonstration {format_french_datetime(clock.now(), tz, with_year=True)}")
    print("\nSe connecter avec Element Web ou Element Desktop, sur cette machine :")
    print(f"  1. « Se connecter » → « Modifier » le serveur d'accueil → {url}")
    print("  2. identifiant et mot de passe d'un compte de démonstration :")
    for a in accounts:
        print(f"       {a['user_id']:<28} {a['password']:<16} {a['name']} ({a['role']})")
    print(f"  3. démarrer une discussion avec {bot_user} et écrire : aide")
    print("     (dans un salon à plusieurs, préfixer : !aide ou /aide)")
    print(f"\nComptes et salon des coordinateurs : {demo_path}")
    if http_url:
        print(f"Santé et métriques : {http_url}/health  {http_url}/metrics")
    print("Ctrl-C arrête le bot et Synapse ; relancer `cercle up` reprend tout.")
    print("=" * 72 + "\n", flush=True)


def cmd_status(args) -> int:
    from bot.status import status

    config = load_config(Path(args.config))
    print(asyncio.run(status(config)))
    return 0


def cmd_identity_restore(args) -> int:
    from bot.identity_restore import restore_identity

    config = load_config(Path(args.config))
    recovery_key = args.recovery_key or input("Clé de récupération : ")
    print(asyncio.run(restore_identity(config, recovery_key)))
    return 0


def _passphrase(args, confirm: bool) -> str:
    """--passphrase-file, else CERCLE_BACKUP_PASSPHRASE, else asked twice (backup) or once (restore)."""
    import getpass
    import os

    if args.passphrase_file:
        return Path(args.passphrase_file).read_text().strip()
    if os.environ.get("CERCLE_BACKUP_PASSPHRASE"):
        return os.environ["CERCLE_BACKUP_PASSPHRASE"]
    first = getpass.getpass("Phrase de passe de la sauvegarde : ")
    if confirm and getpass.getpass("La même, encore une fois : ") != first:
        raise ConfigError("les deux phrases de passe diffèrent")
    return first


def cmd_backup(args) -> int:
    from bot.backup import create_backup

    config = load_config(Path(args.config))
    print(asyncio.run(create_backup(config, Path(args.config), Path(args.file), _passphrase(args, confirm=True))))
    return 0


def cmd_restore(args) -> int:
    from bot.backup import restore_backup

    print(asyncio.run(restore_backup(Path(args.file), Path(args.config), _passphrase(args, confirm=False))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cercle", description="Bot Matrix de coordination des soins (CPTS)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="lancer le bot avec un fichier de configuration")
    run.add_argument("--config", required=True)
    run.set_defaults(func=cmd_run)

    up = sub.add_parser("up", help="Synapse local + bot + comptes de démonstration")
    up.add_argument("--data-dir", default="cercle-data")
    up.add_argument("--port", type=int, default=None)
    up.add_argument("--demo-speed", type=float, default=None,
                    help="accélère l'horloge N fois (démonstration et formation uniquement)")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="état du bot : appareil, signature croisée, salons, échéances")
    st.add_argument("--config", required=True)
    st.set_defaults(func=cmd_status)

    backup = sub.add_parser("backup", help="sauvegarde chiffrée : base, clé de stockage, appareil, configuration")
    backup.add_argument("file")
    backup.add_argument("--config", required=True)
    backup.add_argument("--passphrase-file", default=None)
    backup.set_defaults(func=cmd_backup)

    restore_all = sub.add_parser("restore", help="restaurer une sauvegarde sur une machine neuve")
    restore_all.add_argument("file")
    restore_all.add_argument("--config", required=True,
                             help="fichier de configuration (écrit depuis la sauvegarde s'il n'existe pas)")
    restore_all.add_argument("--passphrase-file", default=None)
    restore_all.set_defaults(func=cmd_restore)

    ident = sub.add_parser("identity", help="identité de signature croisée du bot")
    ident_sub = ident.add_subparsers(dest="identity_command", required=True)
    restore = ident_sub.add_parser("restore", help="restaurer l'identité depuis le stockage sécurisé")
    restore.add_argument("--config", required=True)
    restore.add_argument("--recovery-key", default=None)
    restore.set_defaults(func=cmd_identity_restore)
    return parser


def main(argv: list[str] | None = None) -> int:
    from storage.private import restrict_umask

    restrict_umask()  # config, keys, databases, logs, Synapse's files: private to this account
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"cercle : {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # An operator's error with a French message (storage.instance.InstanceBusy: 3,
        # storage.backup.BackupError: 4), matched by attribute: importing them here would load
        # SQLAlchemy and asyncpg before every command.
        if getattr(e, "exit_code", None) is None:
            raise
        print(f"cercle : {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

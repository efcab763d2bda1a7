"""The connect webview's HTML: a bank picker and a login form. Pure rendering; every value is escaped.

The form posts back (application/x-www-form-urlencoded) `connector_id`, `login`, `password`, plus the
query's values as hidden fields: `client_id`, `redirect_uri`, `state`, and whichever of `code` / `token`
/ `connection_id` the page was opened with. The password is never put back into a page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from sandbox.banks import DemoBank

HIDDEN_FIELDS = ("client_id", "redirect_uri", "state", "code", "token", "connection_id")

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 30rem; margin: 2rem auto; color: #1d2733; }
h1 { font-size: 1.3rem; } fieldset { border: 1px solid #c9d2dc; border-radius: .5rem; margin: 1rem 0; }
label { display: block; margin: .4rem 0; }
input[type=text], input[type=password] { width: 100%; padding: .4rem; }
.error { background: #fde8e8; color: #8a1c1c; padding: .6rem; border-radius: .4rem; }
.hint { color: #5b6776; font-size: .85rem; } button { padding: .5rem 1.2rem; }
"""


def render_connect(
    banks: Sequence[DemoBank],
    hidden: Mapping[str, str],
    *,
    action: str,
    selected: int | None = None,
    login: str = "",
    error: str | None = None,
    reconnect_bank: DemoBank | None = None,
) -> str:
    hidden_inputs = "\n".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in hidden.items()
        if name in HIDDEN_FIELDS and value != ""
    )
    if reconnect_bank is not None:
        picker = (
            f"<p>Reconnexion à <strong>{escape(reconnect_bank.name)}</strong></p>"
            f'<input type="hidden" name="connector_id" value="{reconnect_bank.id}">'
        )
    else:
        options = "\n".join(
            f'<label><input type="radio" name="connector_id" value="{bank.id}" required'
            f"{' checked' if bank.id == selected or (selected is None and index == 0) else ''}> "
            f"{escape(bank.name)}</label>"
            for index, bank in enumerate(banks)
        )
        picker = f"<fieldset><legend>Choisissez votre banque</legend>\n{options}\n</fieldset>"
    error_block = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="fr">
<head><meta charset="utf-8"><title>Connexion bancaire (sandbox)</title><style>{_STYLE}</style></head>
<body>
<h1>Connecter votre banque</h1>
{error_block}
<form method="post" action="{escape(action)}">
{hidden_inputs}
{picker}
<fieldset><legend>Vos identifiants bancaires</legend>
<label>Identifiant
<input type="text" name="login" value="{escape(login)}" autocomplete="username" required></label>
<label>Mot de passe <input type="password" name="password" autocomplete="current-password" required></label>
</fieldset>
<p class="hint">Sandbox : l'identifiant <code>demo</code> réussit ; <code>wrongpass</code>, <code>sca</code>,
<code>actionneeded</code> et <code>unavailable</code> créent la connexion en erreur.</p>
<button type="submit">Se connecter</button>
</form>
</body>
</html>
"""


def render_message(title: str, message: str) -> str:
    return (
        f'<!doctype html>\n<html lang="fr"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f'<p class="error" role="alert">{escape(message)}</p></body></html>\n'
    )

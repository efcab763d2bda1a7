"""Categories: the contract's default tree (ids are stable, labels French), plus default sub-categories
every user has (the built-in dictionary uses some of them)."""

from __future__ import annotations

import re

DEFAULT_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("alimentation", "Alimentation"),
    ("restaurants", "Restaurants et livraisons"),
    ("logement", "Logement"),
    ("energie", "Énergie et eau"),
    ("telecom", "Télécom et internet"),
    ("transport", "Transports"),
    ("carburant", "Carburant"),
    ("sante", "Santé"),
    ("assurances", "Assurances"),
    ("abonnements", "Abonnements"),
    ("shopping", "Shopping"),
    ("loisirs", "Loisirs et voyages"),
    ("banque", "Frais bancaires"),
    ("impots", "Impôts et taxes"),
    ("revenus", "Revenus"),
    ("especes", "Retraits d'espèces"),
    ("epargne", "Épargne et virements internes"),
    ("emprunts", "Crédits et prêts"),
    ("education", "Éducation et enfants"),
    ("divers", "Divers"),
)
ROOT_IDS = frozenset(cid for cid, _ in DEFAULT_CATEGORIES)

# Sub-categories every user has (the built-in dictionary uses some of them).
DEFAULT_SUBCATEGORIES: tuple[tuple[str, str], ...] = (
    ("energie/electricite", "Électricité"),
    ("energie/gaz", "Gaz"),
    ("energie/eau", "Eau"),
    ("transport/train", "Train"),
    ("transport/transports-en-commun", "Transports en commun"),
    ("transport/peage", "Péages"),
    ("transport/parking", "Stationnement"),
    ("transport/vehicule", "Entretien du véhicule"),
    ("abonnements/streaming", "Streaming et musique"),
    ("abonnements/presse", "Presse"),
    ("revenus/salaire", "Salaire"),
    ("revenus/prestations", "Prestations sociales"),
    ("revenus/retraite", "Retraite"),
    ("sante/pharmacie", "Pharmacie"),
    ("sante/optique", "Optique"),
    ("loisirs/sport", "Sport"),
    ("loisirs/hebergement", "Hébergement"),
    ("loisirs/jeux", "Jeux"),
    ("impots/amendes", "Amendes"),
)
DEFAULT_CATEGORY_IDS = ROOT_IDS | frozenset(cid for cid, _ in DEFAULT_SUBCATEGORIES)
CHILD_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def default_tree() -> list[dict[str, object]]:
    """The 20 roots of the contract, in its order, each with its default children."""
    children: dict[str, list[dict[str, object]]] = {cid: [] for cid in ROOT_IDS}
    for cid, label in DEFAULT_SUBCATEGORIES:
        children[cid.split("/", 1)[0]].append({"id": cid, "label": label, "parent": cid.split("/", 1)[0]})
    return [
        {"id": cid, "label": label, "parent": None, "children": children[cid]}
        for cid, label in DEFAULT_CATEGORIES
    ]

"""An offline English→German parallel corpus generated from text that installed packages ship.

For the translation demo and tests, where WMT14 (4.5M pairs, a download) is out of reach. The
sentences are templates filled with real translations, never invented ones:

* numbers, ordinals and years in English and German from ``num2words`` (German writes numbers below
  a million as one word, e.g. ``dreihundertvierundzwanzig``, so numbers always sit inside a
  sentence of at least four tokens, never alone: a bare number would score BLEU 0 by construction);
* country, language and currency names from ``pycountry``'s gettext catalogs (``iso3166-1``,
  ``iso639-3``, ``iso4217``, German locale), restricted to names that take no article in German
  (``Frankreich``, not ``die Schweiz``) and to currencies whose German plural equals the singular
  (``zweiundvierzig Euro``), so the templates stay grammatical;
* a small hand-written lexicon (pronouns, verb forms, plurals, month names, places) whose German
  forms were chosen to be correct in the one case each template uses (``am dritten Mai``,
  ``im Garten``, ``von Frankreich nach Italien``).

Sentence kinds: counts of things, dates, prices, lists of countries and languages
(``X, Y and Z`` -> ``X, Y und Z``), journeys, years of birth. The corpus is deterministic given the
seed (Python's ``random.Random(seed)``; the library versions are recorded in the manifest), the
pairs are distinct, and the split is fixed: the first ``n_train`` distinct pairs drawn are train,
the next ``n_valid`` valid, the next ``n_test`` test, so no pair (indeed no English sentence) is in
two splits.

:func:`write_embedded_corpus` writes the raw text; :func:`embedded_translation` adds a joint
sentencepiece BPE model and returns a :class:`~.pairs.TranslationData`. Written by hand because no
package ships a small offline En-De corpus.
"""

from __future__ import annotations

import gettext
import hashlib
import importlib.metadata
import json
import os
import random
from functools import cache, lru_cache
from pathlib import Path

from ...atomic import atomic_write
from ...errors import UserError
from .pairs import TranslationData, read_raw_text, train_sentencepiece

GENERATOR = "sparsetrain.data.translation.embedded"
VERSION = 1
SPLIT_FILES = tuple(f"{split}.{lang}" for split in ("train", "valid", "test") for lang in ("en", "de"))
MANIFEST = "manifest.json"

# --------------------------------------------------------------------------------------------------
# lexicon (English, German) — German forms are the ones each template needs

# subject: English, German, English verb form key ("base" or "s"), German person key
SUBJECTS = [("I", "Ich", "base", "1sg"), ("We", "Wir", "base", "1pl"), ("She", "Sie", "s", "3sg"),
            ("He", "Er", "s", "3sg"), ("They", "Sie", "base", "3pl")]
# verb: English base, English 3rd singular, German 1sg, 1pl, 3sg, 3pl
VERBS_SEE = [("see", "sees", "sehe", "sehen", "sieht", "sehen"), ("count", "counts", "zähle", "zählen", "zählt", "zählen"),
             ("find", "finds", "finde", "finden", "findet", "finden")]
VERBS_TRAVEL = [("fly", "flies", "fliege", "fliegen", "fliegt", "fliegen"),
                ("travel", "travels", "reise", "reisen", "reist", "reisen"),
                ("drive", "drives", "fahre", "fahren", "fährt", "fahren")]
VERB_SPEAK = [("speak", "speaks", "spreche", "sprechen", "spricht", "sprechen"),
              ("learn", "learns", "lerne", "lernen", "lernt", "lernen"),
              ("understand", "understands", "verstehe", "verstehen", "versteht", "verstehen")]
VERB_STAY = ("stay", "stays", "bleibe", "bleiben", "bleibt", "bleiben")
# perfect auxiliary "haben" by person, for "visited" -> "haben ... besucht"
HABEN = {"1sg": "habe", "1pl": "haben", "3sg": "hat", "3pl": "haben"}
PERSON_INDEX = {"1sg": 2, "1pl": 3, "3sg": 4, "3pl": 5}

NOUNS = [("books", "Bücher"), ("apples", "Äpfel"), ("chairs", "Stühle"), ("birds", "Vögel"), ("cars", "Autos"),
         ("houses", "Häuser"), ("trees", "Bäume"), ("bottles", "Flaschen"), ("letters", "Briefe"),
         ("dogs", "Hunde"), ("cats", "Katzen"), ("boxes", "Kisten"), ("flowers", "Blumen"),
         ("children", "Kinder"), ("bicycles", "Fahrräder"), ("pictures", "Bilder"), ("cups", "Tassen"),
         ("stones", "Steine")]
PLACES = [("in the garden", "im Garten"), ("in the city", "in der Stadt"), ("at the station", "am Bahnhof"),
          ("in the park", "im Park"), ("in the kitchen", "in der Küche"), ("on the street", "auf der Straße"),
          ("in the village", "im Dorf"), ("at the market", "auf dem Markt")]
EVENTS = [("The meeting", "Das Treffen"), ("The concert", "Das Konzert"), ("My birthday", "Mein Geburtstag"),
          ("The wedding", "Die Hochzeit"), ("The exam", "Die Prüfung"), ("The party", "Die Feier"),
          ("Her birthday", "Ihr Geburtstag"), ("The festival", "Das Fest")]
MONTHS = [("January", "Januar", 31), ("February", "Februar", 28), ("March", "März", 31), ("April", "April", 30),
          ("May", "Mai", 31), ("June", "Juni", 30), ("July", "Juli", 31), ("August", "August", 31),
          ("September", "September", 30), ("October", "Oktober", 31), ("November", "November", 30),
          ("December", "Dezember", 31)]
ITEMS = [("ticket", "Die Fahrkarte"), ("book", "Das Buch"), ("room", "Das Zimmer"), ("bicycle", "Das Fahrrad"),
         ("coat", "Der Mantel"), ("lamp", "Die Lampe"), ("table", "Der Tisch"), ("watch", "Die Uhr"),
         ("dinner", "Das Abendessen"), ("bag", "Die Tasche")]

# pycountry English names; the German comes from the iso3166-1 catalog. Only names used without an
# article in German, so "nach X", "von X", "in X", "X besucht" are all correct.
COUNTRIES = ["France", "Italy", "Germany", "Spain", "Portugal", "Austria", "Belgium", "Denmark", "Sweden",
             "Norway", "Finland", "Poland", "Greece", "Hungary", "Croatia", "Serbia", "Romania", "Bulgaria",
             "Ireland", "Iceland", "Estonia", "Latvia", "Lithuania", "Slovenia", "Luxembourg", "Japan", "China",
             "India", "Canada", "Brazil", "Argentina", "Chile", "Peru", "Mexico", "Egypt", "Morocco", "Tunisia",
             "Kenya", "Nigeria", "Ghana", "Australia", "Indonesia", "Thailand", "Malaysia", "Singapore",
             "Israel", "Jordan", "Georgia", "Armenia", "Kazakhstan", "Pakistan", "Nepal", "Cuba", "Jamaica",
             "Colombia", "Ecuador", "Uruguay", "Paraguay", "Cyprus", "Malta", "Albania", "Ethiopia",
             "South Africa", "New Zealand", "Qatar", "Oman", "Kuwait", "Monaco", "Montenegro", "Cambodia",
             "Madagascar", "Angola", "Namibia", "Zambia", "Uganda", "Rwanda", "Bangladesh", "Costa Rica",
             "Panama", "Guatemala", "Honduras", "Algeria", "Czechia"]
# iso639-3 English names; German from the catalog (one word, capitalized, no article: "spricht Deutsch")
LANGUAGES = ["French", "German", "Italian", "English", "Dutch", "Polish", "Swedish", "Danish", "Norwegian",
             "Finnish", "Hungarian", "Czech", "Portuguese", "Russian", "Japanese", "Chinese", "Arabic", "Turkish",
             "Romanian", "Bulgarian", "Croatian", "Serbian", "Ukrainian", "Korean", "Irish", "Icelandic",
             "Estonian", "Latvian", "Lithuanian", "Slovenian", "Slovak", "Hebrew", "Persian", "Vietnamese",
             "Indonesian", "Welsh", "Catalan", "Basque", "Albanian", "Georgian", "Armenian", "Maltese"]
# iso4217 English names with their English plural; German from the catalog, whose plural after a
# number equals the singular ("zweiundvierzig Euro", "zweiundvierzig Schweizer Franken")
CURRENCIES = [("Euro", "euros"), ("US Dollar", "US dollars"), ("Pound Sterling", "pounds sterling"), ("Yen", "yen"),
              ("Swiss Franc", "Swiss francs"), ("Forint", "forints"), ("Rand", "rand"), ("Won", "won"),
              ("Baht", "baht"), ("New Zealand Dollar", "New Zealand dollars"),
              ("Singapore Dollar", "Singapore dollars"), ("Hong Kong Dollar", "Hong Kong dollars")]


@lru_cache(maxsize=1)
def _catalog_names() -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(English, German) countries, languages and currencies, German from pycountry's catalogs."""
    import pycountry

    def table(domain: str, db, names):
        tr = gettext.translation(domain, pycountry.LOCALES_DIR, languages=["de"])
        out = []
        for name in names:
            english = name if isinstance(name, str) else name[0]
            if db.get(name=english) is None:
                continue  # not in this pycountry release: skip rather than invent
            german = tr.gettext(english)
            if not german or "(" in german or "," in german:
                continue
            out.append((english if isinstance(name, str) else name[1], german))
        return out

    return (table("iso3166-1", pycountry.countries, COUNTRIES),
            table("iso639-3", pycountry.languages, LANGUAGES),
            table("iso4217", pycountry.currencies, CURRENCIES))


@cache
def _number(n: int) -> tuple[str, str]:
    from num2words import num2words

    return num2words(n, lang="en"), num2words(n, lang="de")


@cache
def _ordinal(n: int) -> tuple[str, str]:
    """("third", "dritten"): the English ordinal and the German dative ("am dritten Mai")."""
    from num2words import num2words

    return num2words(n, lang="en", to="ordinal"), num2words(n, lang="de", to="ordinal") + "n"


@cache
def _year(n: int) -> tuple[str, str]:
    from num2words import num2words

    return num2words(n, lang="en", to="year"), num2words(n, lang="de", to="year")


def _count(rng: random.Random) -> int:
    """A number in 2..999 whose German form works before a plural noun (not ...eins)."""
    while True:
        n = rng.randint(2, 999)
        if n % 100 != 1:
            return n


def _list(items: list[tuple[str, str]]) -> tuple[str, str]:
    en = [e for e, _ in items]
    de = [g for _, g in items]
    if len(items) == 2:
        return f"{en[0]} and {en[1]}", f"{de[0]} und {de[1]}"
    return f"{', '.join(en[:-1])} and {en[-1]}", f"{', '.join(de[:-1])} und {de[-1]}"


def _verb(verb: tuple, subject: tuple) -> tuple[str, str]:
    return (verb[0] if subject[2] == "base" else verb[1]), verb[PERSON_INDEX[subject[3]]]


def _date(rng: random.Random) -> tuple[str, str]:
    month_en, month_de, days = rng.choice(MONTHS)
    o_en, o_de = _ordinal(rng.randint(1, days))
    return f"the {o_en} of {month_en}", f"am {o_de} {month_de}"


def _sentence(rng: random.Random) -> tuple[str, str]:
    countries, languages, currencies = _catalog_names()
    kind = rng.randrange(9)
    if kind == 0:  # counts
        s = rng.choice(SUBJECTS)
        v_en, v_de = _verb(rng.choice(VERBS_SEE), s)
        n_en, n_de = _number(_count(rng))
        noun, place = rng.choice(NOUNS), rng.choice(PLACES)
        return f"{s[0]} {v_en} {n_en} {noun[0]} {place[0]}.", f"{s[1]} {v_de} {n_de} {noun[1]} {place[1]}."
    if kind == 1:  # there are
        n_en, n_de = _number(_count(rng))
        noun, place = rng.choice(NOUNS), rng.choice(PLACES)
        return (f"There are {n_en} {noun[0]} {place[0]}.",
                f"{place[1][0].upper()}{place[1][1:]} gibt es {n_de} {noun[1]}.")
    if kind == 2:  # dates
        event = rng.choice(EVENTS)
        d_en, d_de = _date(rng)
        return f"{event[0]} is on {d_en}.", f"{event[1]} ist {d_de}."
    if kind == 3:  # prices
        item = rng.choice(ITEMS)
        n_en, n_de = _number(_count(rng))
        cur = rng.choice(currencies)
        if rng.random() < 0.5:
            return f"The {item[0]} costs {n_en} {cur[0]}.", f"{item[1]} kostet {n_de} {cur[1]}."
        c = rng.choice(countries)
        return (f"The {item[0]} in {c[0]} costs {n_en} {cur[0]}.",
                f"{item[1]} in {c[1]} kostet {n_de} {cur[1]}.")
    if kind == 4:  # visited countries
        s = rng.choice(SUBJECTS)
        l_en, l_de = _list(rng.sample(countries, rng.randint(2, 4)))
        return f"{s[0]} visited {l_en}.", f"{s[1]} {HABEN[s[3]]} {l_de} besucht."
    if kind == 5:  # languages
        s = rng.choice(SUBJECTS)
        v_en, v_de = _verb(rng.choice(VERB_SPEAK), s)
        l_en, l_de = _list(rng.sample(languages, rng.randint(2, 4)))
        return f"{s[0]} {v_en} {l_en}.", f"{s[1]} {v_de} {l_de}."
    if kind == 6:  # journeys
        s = rng.choice(SUBJECTS)
        v_en, v_de = _verb(rng.choice(VERBS_TRAVEL), s)
        a, b = rng.sample(countries, 2)
        d_en, d_de = _date(rng)
        return f"{s[0]} {v_en} from {a[0]} to {b[0]} on {d_en}.", f"{s[1]} {v_de} {d_de} von {a[1]} nach {b[1]}."
    if kind == 7:  # stays
        s = rng.choice(SUBJECTS)
        v_en, v_de = _verb(VERB_STAY, s)
        n_en, n_de = _number(_count(rng))
        c = rng.choice(countries)
        return f"{s[0]} {v_en} {n_en} days in {c[0]}.", f"{s[1]} {v_de} {n_de} Tage in {c[1]}."
    # years of birth / books in a language
    if rng.random() < 0.5:
        s = rng.choice(SUBJECTS)
        y_en, y_de = _year(rng.randint(1900, 2020))
        was, wurde = ("were", "wurden") if s[3] in ("1pl", "3pl") else ("was", "wurde")
        return f"{s[0]} {was} born in {y_en}.", f"{s[1]} {wurde} im Jahr {y_de} geboren."
    noun = rng.choice([("books", "Bücher"), ("letters", "Briefe")])
    lang = rng.choice(languages)
    return f"The {noun[0]} are written in {lang[0]}.", f"Die {noun[1]} sind auf {lang[1]} geschrieben."


def generate_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    """The first ``n`` distinct (English, German) pairs drawn with ``random.Random(seed)``.

    Distinct means distinct English sentences (the German is a function of the draw, and two draws
    with the same English give the same German). Every sentence has at least 4 tokens.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise UserError(f"the embedded corpus cannot produce {n} distinct sentence pairs; ask for fewer")
        en, de = _sentence(rng)
        if en in seen:
            continue
        seen.add(en)
        pairs.append((en, de))
    return pairs


# --------------------------------------------------------------------------------------------------
# files


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("pycountry", "num2words"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{name}={v!r} must be an integer >= 1")


def _params(seed: int, n_train: int, n_valid: int, n_test: int) -> dict:
    return {"generator": GENERATOR, "version": VERSION, "seed": seed, "n_train": n_train, "n_valid": n_valid,
            "n_test": n_test}


def _read_manifest(d: Path) -> dict | None:
    try:
        m = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("generator") == GENERATOR else None


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _ours(name: str) -> bool:
    """Whether a file name in a corpus directory is one this module writes (or a temporary of one)."""
    base = name[1:].split(".", 1)[0] if name.startswith(".") else name
    return (name in SPLIT_FILES or name == MANIFEST or name.startswith("spm-")
            or (name.startswith(".") and name.endswith(".tmp") and (base in ("train", "valid", "test", "manifest")
                                                                     or base.startswith("spm-"))))


def write_embedded_corpus(out_dir: str | os.PathLike[str], seed: int = 0, n_train: int = 12000, n_valid: int = 500,
                          n_test: int = 500) -> Path:
    """Write the corpus as raw parallel text into ``out_dir``; return ``out_dir``.

    Files: ``train.en``, ``train.de``, ``valid.en``, ``valid.de``, ``test.en``, ``test.de`` (UTF-8,
    one sentence per line, ``\\n`` endings) and ``manifest.json`` (generator, version, seed, sizes,
    library versions, sha256 of each file). Each file is written atomically and the manifest last,
    so a directory with a manifest is complete; nothing is written outside ``out_dir``.

    Reuse: a directory whose manifest matches (generator version, seed, sizes) and whose files
    match their recorded hashes is returned as it is. A directory holding a corpus of this module
    with other parameters, or any file this module does not write, is refused with a
    ``UserError`` (use another directory; :func:`embedded_translation` names one per parameter
    set under its cache root). A directory with only this module's files but no (or a stale)
    manifest, e.g. after an interrupted write, is rewritten.
    """
    _check_sizes(n_train=n_train, n_valid=n_valid, n_test=n_test)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed={seed!r} must be an integer")
    d = Path(out_dir)
    wanted = _params(seed, n_train, n_valid, n_test)
    if d.exists():
        if not d.is_dir():
            raise UserError(f"corpus directory {str(d)!r} is a file; give a directory")
        foreign = sorted(p.name for p in d.iterdir() if not _ours(p.name))
        if foreign:
            raise UserError(f"corpus directory {str(d)!r} holds files this generator did not write "
                            f"({', '.join(foreign[:3])}); give an empty or new directory")
        manifest = _read_manifest(d)
        if manifest is not None:
            if {k: manifest.get(k) for k in wanted} != wanted:
                have = {k: manifest.get(k) for k in wanted if manifest.get(k) != wanted[k]}
                raise UserError(f"corpus directory {str(d)!r} holds an embedded corpus with other parameters "
                                f"({have}); give another directory for {wanted}")
            hashes = manifest.get("sha256", {})
            if all((d / f).is_file() and hashes.get(f) == _sha256(d / f) for f in SPLIT_FILES):
                return d
    pairs = generate_pairs(seed, n_train + n_valid + n_test)
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid),
              "test": (n_train + n_valid, n_train + n_valid + n_test)}
    if d.is_dir():
        (d / MANIFEST).unlink(missing_ok=True)  # the files below are being replaced: not complete until the end
    hashes = {}
    for split, (lo, hi) in bounds.items():
        for k, lang in enumerate(("en", "de")):
            path = atomic_write(d / f"{split}.{lang}", "".join(p[k] + "\n" for p in pairs[lo:hi]))
            hashes[path.name] = _sha256(path)
    manifest = {**wanted, "libraries": _versions(), "sha256": hashes}
    atomic_write(d / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return d


def embedded_corpus_dir(cache_root: str | os.PathLike[str], seed: int = 0, n_train: int = 12000, n_valid: int = 500,
                        n_test: int = 500) -> Path:
    """The corpus directory :func:`embedded_translation` uses under ``cache_root`` (one per parameter set)."""
    return Path(cache_root) / f"embedded-en-de-v{VERSION}-seed{seed}-{n_train}-{n_valid}-{n_test}"


def embedded_translation(cache_root: str | os.PathLike[str], seed: int = 0, vocab_size: int = 1000,
                         n_train: int = 12000, n_valid: int = 500, n_test: int = 500) -> TranslationData:
    """The embedded En→De corpus, sentencepiece-encoded, as a :class:`~.pairs.TranslationData`.

    Writes the corpus to :func:`embedded_corpus_dir` under ``cache_root`` (reused when present),
    trains a joint BPE sentencepiece model of ``vocab_size`` pieces on ``train.en`` + ``train.de``
    there (``spm-bpe{vocab_size}.model``; deterministic, reused when present) and reads the text with
    :func:`~.pairs.read_raw_text`. ``raw_refs`` holds the raw German of every split. Takes a few
    seconds on two cores at the default sizes.
    """
    _check_sizes(vocab_size=vocab_size)
    d = write_embedded_corpus(embedded_corpus_dir(cache_root, seed, n_train, n_valid, n_test), seed,
                              n_train, n_valid, n_test)
    model = d / f"spm-bpe{vocab_size}.model"
    if not model.is_file():
        train_sentencepiece([d / "train.en", d / "train.de"], d / f"spm-bpe{vocab_size}", vocab_size,
                            model_type="bpe", character_coverage=1.0, seed=seed, threads=1)
    return read_raw_text(d, "en", "de", model)

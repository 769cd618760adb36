"""Seeded text generators for the default corpus.

A closed-vocabulary voice-assistant command grammar (lights, timers, alarms, music, weather,
navigation, numbers, digit strings, times and dates) gives the bulk of the sentences; open
sentences from Debian ``fortunes`` (when installed) add a minority of free text. All text is
normalised to lowercase letters, apostrophes and single spaces, the alphabet the tokenizer and
the WER scorer expect.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterable

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}
_MONTHS = "january february march april may june july august september october november december".split()
_DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()

_DROP = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lowercase; keep letters, apostrophes and single spaces (digits are not spelled out)."""
    text = text.lower().replace("\u2019", "'").replace("-", " ")
    text = _DROP.sub(" ", text)
    text = " ".join(w.strip("'") for w in text.split())
    return _SPACES.sub(" ", text).strip()


def number_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("one hundred twenty three")."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def ordinal_words(n: int) -> str:
    """Ordinal words for 1 <= n < 100 ("twenty first")."""
    words = number_words(n).split()
    last = words[-1]
    if last in _ORD:
        words[-1] = _ORD[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _pick(rng: random.Random, items: str | list[str]) -> str:
    seq = items.split("|") if isinstance(items, str) else items
    return rng.choice(seq)


def _time(rng: random.Random) -> str:
    h = rng.randint(1, 12)
    m = rng.choice([0, 0, 5, 10, 15, 20, 30, 40, 45, 50, rng.randint(1, 59)])
    if m == 0:
        t = f"{number_words(h)} o'clock" if rng.random() < 0.5 else number_words(h)
    elif m < 10:
        t = f"{number_words(h)} oh {number_words(m)}"
    else:
        t = f"{number_words(h)} {number_words(m)}"
    if rng.random() < 0.5:
        t += " " + _pick(rng, "a m|p m|in the morning|in the evening|at night")
    return t


def _date(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        return _pick(rng, _DAYS)
    if r < 0.45:
        return _pick(rng, "today|tomorrow|tonight|next week|this weekend")
    month, day = _pick(rng, _MONTHS), ordinal_words(rng.randint(1, 31))
    return f"{month} {day}" if rng.random() < 0.6 else f"the {day} of {month}"


def _duration(rng: random.Random) -> str:
    n = rng.choice([1, 2, 3, 5, 10, 15, 20, 25, 30, 45, rng.randint(1, 90)])
    unit = _pick(rng, "second|minute|minute|hour")
    return f"{number_words(n)} {unit}{'' if n == 1 else 's'}"


def _digits(rng: random.Random, lo: int = 3, hi: int = 7) -> str:
    names = ["oh" if rng.random() < 0.2 else "zero"] + _ONES[1:10]
    return " ".join(rng.choice(names) for _ in range(rng.randint(lo, hi)))


_ROOMS = "kitchen|living room|bedroom|bathroom|hallway|office|garage|garden|dining room|basement|porch|kids room"
_COLOURS = "red|green|blue|yellow|white|warm white|purple|orange|pink"
_ARTISTS = "the beatles|miles davis|taylor swift|bach|mozart|queen|nina simone|the rolling stones|adele|bob marley"
_GENRES = "jazz|rock|classical music|pop music|the radio|some news|a podcast|relaxing music|my playlist|country music"
_CITIES = "london|paris|berlin|tokyo|new york|chicago|boston|seattle|madrid|rome|dublin|toronto|sydney|mumbai|cairo"
_PLACES = "the airport|the station|home|work|the nearest gas station|the hospital|the library|the city centre|a coffee shop|the supermarket"
_PEOPLE = "mom|dad|john|sarah|the office|my sister|my brother|doctor smith|alice|peter"
_POLITE = "|please |could you |can you |hey computer |okay |would you "
_QUESTION_POLITE = "||hey computer |okay "
_QUESTION_START = ("what", "how", "who", "will", "do ", "are ", "is ")


def _lights(r: random.Random) -> str:
    room = _pick(r, _ROOMS)
    forms = [
        lambda: f"turn {_pick(r, 'on|off')} the {room} lights",
        lambda: f"switch {_pick(r, 'on|off')} the lights in the {room}",
        lambda: f"dim the {room} lights to {number_words(r.choice(range(10, 101, 10)))} percent",
        lambda: f"set the {room} lights to {_pick(r, _COLOURS)}",
        lambda: f"make the {room} {_pick(r, 'brighter|darker|warmer|cooler')}",
        lambda: f"are the lights on in the {room}",
    ]
    return r.choice(forms)()


def _timers(r: random.Random) -> str:
    forms = [
        lambda: f"set a timer for {_duration(r)}",
        lambda: f"start a {number_words(r.randint(2, 60))} {_pick(r, 'second|minute|hour')} timer",
        lambda: f"how much time is left on the {_pick(r, 'timer|pasta timer|oven timer')}",
        lambda: f"{_pick(r, 'cancel|pause|stop|restart')} the timer",
        lambda: f"add {_duration(r)} to the timer",
    ]
    return r.choice(forms)()


def _alarms(r: random.Random) -> str:
    forms = [
        lambda: f"set an alarm for {_time(r)}",
        lambda: f"wake me up at {_time(r)} {_date(r)}",
        lambda: f"remind me to {_pick(r, 'call ' + _pick(r, _PEOPLE) + '|buy milk|take my medicine|water the plants|pay the rent|feed the cat')} at {_time(r)}",
        lambda: f"{_pick(r, 'delete|cancel|snooze')} my {_pick(r, 'alarm|morning alarm|next alarm')}",
        lambda: f"what alarms do i have {_date(r)}",
    ]
    return r.choice(forms)()


def _music(r: random.Random) -> str:
    forms = [
        lambda: f"play {_pick(r, _GENRES)}",
        lambda: f"play something by {_pick(r, _ARTISTS)}",
        lambda: f"play {_pick(r, _GENRES)} in the {_pick(r, _ROOMS)}",
        lambda: f"{_pick(r, 'pause|stop|resume|skip')} the music",
        lambda: f"{_pick(r, 'turn it up|turn it down|next song|previous song|shuffle my playlist')}",
        lambda: f"set the volume to {number_words(r.randint(0, 10))}",
        lambda: f"who sings this song",
    ]
    return r.choice(forms)()


def _weather(r: random.Random) -> str:
    forms = [
        lambda: f"what's the weather {_pick(r, 'like |')}in {_pick(r, _CITIES)} {_date(r)}",
        lambda: f"will it {_pick(r, 'rain|snow|be windy|be sunny')} {_date(r)}",
        lambda: f"how {_pick(r, 'hot|cold|warm')} is it {_pick(r, 'outside|in ' + _pick(r, _CITIES))}",
        lambda: f"do i need an umbrella {_date(r)}",
        lambda: f"what's the temperature in {_pick(r, _CITIES)}",
    ]
    return r.choice(forms)()


def _navigation(r: random.Random) -> str:
    forms = [
        lambda: f"navigate to {_pick(r, _PLACES)}",
        lambda: f"how long does it take to get to {_pick(r, _PLACES)}",
        lambda: f"how far is {_pick(r, _CITIES)} from {_pick(r, _CITIES)}",
        lambda: f"find {_pick(r, 'a restaurant|a pharmacy|parking|a bank|a hotel')} near {_pick(r, 'me|' + _pick(r, _PLACES))}",
        lambda: f"take me {_pick(r, 'home|to work')} avoiding {_pick(r, 'traffic|tolls|highways')}",
        lambda: f"turn {_pick(r, 'left|right')} in {number_words(r.choice([50, 100, 200, 300, 500]))} meters",
    ]
    return r.choice(forms)()


def _numbers(r: random.Random) -> str:
    forms = [
        lambda: f"call {_digits(r, 7, 10)}",
        lambda: f"my code is {_digits(r, 4, 6)}",
        lambda: f"{_digits(r, 3, 8)}",
        lambda: f"what is {number_words(r.randint(0, 999))} {_pick(r, 'plus|minus|times')} {number_words(r.randint(0, 99))}",
        lambda: f"convert {number_words(r.randint(1, 500))} {_pick(r, 'dollars to euros|miles to kilometers|pounds to kilos|feet to meters')}",
        lambda: f"send {number_words(r.randint(1, 9999))} dollars to {_pick(r, _PEOPLE)}",
        lambda: f"call {_pick(r, _PEOPLE)}",
    ]
    return r.choice(forms)()


def _calendar(r: random.Random) -> str:
    forms = [
        lambda: f"what time is it",
        lambda: f"what's on my calendar {_date(r)}",
        lambda: f"schedule a meeting with {_pick(r, _PEOPLE)} {_date(r)} at {_time(r)}",
        lambda: f"what day is {_date(r)}",
        lambda: f"move my {_time(r)} meeting to {_date(r)}",
    ]
    return r.choice(forms)()


_DOMAINS: list[Callable[[random.Random], str]] = [
    _lights, _timers, _alarms, _music, _weather, _navigation, _numbers, _numbers, _calendar,
]


def command_sentence(rng: random.Random) -> str:
    """One normalised command sentence drawn from the grammar."""
    body = rng.choice(_DOMAINS)(rng)
    first = body.split()[0]
    plain = body.startswith(_QUESTION_START) or first in _ONES or first in ("oh", "my")
    polite = _QUESTION_POLITE if plain else _POLITE
    return normalize_text(_pick(rng, polite) + body)


FORTUNE_DIRS = ("/usr/share/games/fortunes",)


def fortune_sentences(dirs: Iterable[str] = FORTUNE_DIRS, min_words: int = 4, max_words: int = 20) -> list[str]:
    """Clean, deduplicated, sorted sentences from fortune files (empty list when absent).

    Each fortune is split into sentences; those with digits, or outside [min_words, max_words]
    after normalisation, are dropped (digits have no single spoken form).
    """
    seen: set[str] = set()
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if "." in name or not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                with open(path, encoding="utf-8", errors="strict") as f:
                    raw = f.read()
            except (UnicodeDecodeError, OSError):
                continue
            for fortune in raw.split("\n%\n"):
                if "--" in fortune:  # drop attributions ("-- Mark Twain")
                    fortune = fortune.split("--")[0]
                for sent in re.split(r"(?<=[.!?])\s+", " ".join(fortune.split())):
                    if re.search(r"[0-9@#$%&*_=<>{}\[\]|/\\^~`]", sent):
                        continue
                    text = normalize_text(sent)
                    if min_words <= len(text.split()) <= max_words:
                        seen.add(text)
    return sorted(seen)


def make_sentences(n: int, rng: random.Random, fortunes: list[str], open_share: float = 0.15,
                   exclude: set[str] | None = None) -> list[str]:
    """``n`` sentences: mostly commands, ``open_share`` from ``fortunes``; none in ``exclude``.

    Duplicates within the result are allowed only for commands (short commands repeat in real
    use); ``exclude`` keeps test sentences out of training.
    """
    exclude = exclude or set()
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"could not draw {n} sentences not in the excluded set")
        if fortunes and rng.random() < open_share:
            s = rng.choice(fortunes)
        else:
            s = command_sentence(rng)
        if s and s not in exclude:
            out.append(s)
    return out

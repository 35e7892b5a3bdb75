"""The simulated TL;DR world: latent facts -> posts, reference summaries and policy samples.

A Reddit post is built from a handful of facts (the narrator's age and gender, another person's role
and age, how long they have known each other, an event, the narrator's problem, a closing question)
plus distractor sentences that carry nothing a summary needs. A news article (the out-of-domain
CNN/DM subset) is built the same way from an official, a surname, an action, a place, a day and an
amount. Facts are phrased the same way in the text and in a good summary, so a small model can learn
to copy them. All randomness comes from a `random.Random` the caller seeds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rlhf_repro.sim import vocab as V

TLDR_FACT_KEYS = ("narrator_age", "other_age", "role", "duration", "event", "problem", "question")
NEWS_FACT_KEYS = ("official", "person", "action", "place", "day", "amount")


def age_tag(age: int, gender: str) -> str:
    return f"{age} {gender}"


@dataclass
class TldrFacts:
    narrator_age: str  # "24 M"
    other_age: str  # "23 F"
    role: str
    duration: str  # "9 months"
    event: str
    problem: str
    question: str
    other_gender: str
    kind: str  # romantic / friend / family

    @property
    def sub(self) -> str:
        return {"F": "she", "M": "he"}[self.other_gender]


@dataclass
class NewsFacts:
    official: str
    first_name: str
    person: str  # the surname: what a summary must get right
    action: str
    place: str
    day: str
    amount: str  # "$4 million"


@dataclass
class Post:
    facts: TldrFacts | NewsFacts
    title: str
    body: str
    distractors: list[str] = field(default_factory=list)


def sample_tldr_facts(rng: random.Random) -> TldrFacts:
    role = rng.choice(sorted(V.ROLES))
    gender, kind = V.ROLES[role]
    other_gender = gender or rng.choice("FM")
    narrator_age = rng.randint(16, 45)
    other_age = max(14, min(70, narrator_age + rng.randint(-6, 6)))
    if kind == "family" and role in ("mom", "dad"):
        other_age = narrator_age + rng.randint(20, 32)
    unit = rng.choice(sorted(V.DURATION_UNITS))
    lo, hi = V.DURATION_UNITS[unit]
    return TldrFacts(
        narrator_age=age_tag(narrator_age, rng.choice("FM")),
        other_age=age_tag(other_age, other_gender),
        role=role,
        duration=f"{rng.randint(lo, hi)} {unit}",
        event=rng.choice(V.EVENTS),
        problem=rng.choice(V.PROBLEMS),
        question=rng.choice(V.QUESTIONS),
        other_gender=other_gender,
        kind=kind,
    )


def distractor_sentence(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return rng.choice(V.FILLER_SENTENCES)
    template = rng.choice(V.DISTRACTOR_TEMPLATES)
    name, name2 = rng.sample(V.FIRST_NAMES, 2)
    return template.format(
        job=rng.choice(V.JOBS),
        city=rng.choice(V.CITIES),
        name=name,
        name2=name2,
        pet=rng.choice(V.PETS),
        hobby=rng.choice(V.HOBBIES),
        food=rng.choice(V.FOODS),
    )


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def n_distractors(rng: random.Random, mean: float) -> int:
    # Mostly short posts with a long tail, so some queries exceed the token budget and get
    # truncated at paragraph boundaries (detail 2).
    n = int(rng.expovariate(1.0 / mean))
    return min(n, 40)


def make_tldr_post(rng: random.Random, distractor_mean: float = 3.0) -> Post:
    f = sample_tldr_facts(rng)
    fmt = dict(na=f.narrator_age, oa=f.other_age, role=f.role, dur=f.duration, sub=f.sub)
    intro = rng.choice(V.DURATION_SENTENCES[f.kind]).format(**fmt)
    event = rng.choice(V.EVENT_SENTENCES).format(sub=f.sub, event=f.event)
    problem = rng.choice(V.PROBLEM_SENTENCES).format(problem=f.problem)
    distractors = [distractor_sentence(rng) for _ in range(n_distractors(rng, distractor_mean))]
    # Paragraphs: intro, event, problem, then distractor paragraphs, then the question. The first
    # three paragraphs also take some distractors, so facts sit among irrelevant sentences.
    paragraphs = [[intro], [event], [problem]]
    rest = list(distractors)
    for p in paragraphs:
        while rest and rng.random() < 0.35:
            p.append(rest.pop())
    while rest:
        take = rng.randint(1, 3)
        paragraphs.append(rest[:take])
        rest = rest[take:]
    paragraphs.append([f"Question: {f.question}"] + ([rng.choice(V.FILLER_SENTENCES)] if rng.random() < 0.2 else []))
    sep = "\n\n" if rng.random() < 0.8 else "\n"
    body = sep.join(" ".join(p) for p in paragraphs)
    title = _capitalize(
        rng.choice(V.TITLE_TEMPLATES).format(role=f.role, event=f.event, question=f.question, oa=f.other_age)
    )
    return Post(facts=f, title=title, body=body, distractors=distractors)


def sample_news_facts(rng: random.Random) -> NewsFacts:
    return NewsFacts(
        official=rng.choice(V.OFFICIALS),
        first_name=rng.choice(V.FIRST_NAMES),
        person=rng.choice(V.SURNAMES),
        action=rng.choice(V.ACTIONS),
        place=rng.choice(V.NEWS_PLACES),
        day=rng.choice(V.DAYS),
        amount=f"${rng.randint(2, 90)} million",
    )


def make_news_article(rng: random.Random, site: str, distractor_mean: float = 6.0) -> Post:
    f = sample_news_facts(rng)
    lead = f"{f.official} {f.first_name} {f.person} {f.action} in {f.place} on {f.day}."
    if site == "cnn":
        lead = f"({f.place}, CNN) -- {lead}"
    else:
        lead = f"By . Staff Reporter . {lead}"
    cost = f"The plan will cost {f.amount}, officials said."
    distractors = [rng.choice(V.NEWS_DISTRACTORS) for _ in range(n_distractors(rng, distractor_mean))]
    paragraphs = [[lead], [cost]]
    rest = list(distractors)
    while rest:
        take = rng.randint(1, 3)
        paragraphs.append(rest[:take])
        rest = rest[take:]
    body = "\n".join(" ".join(p) for p in paragraphs)
    title = f"{f.official} {f.person} {f.action}"
    return Post(facts=f, title=title, body=body, distractors=distractors)


# --- Summaries -----------------------------------------------------------------------------------


@dataclass
class SummarySpec:
    """What a summary says: a value per fact (None = left out) and how it is damaged.

    `values` may hold a *wrong* value for a fact (a contradiction of the post). `vague` facts are
    replaced by a content-free phrase. `extras` are irrelevant sentences copied from the post. `opener`
    is a filler phrase put in front ("So basically,"): padding that says nothing.
    """

    values: dict[str, str | None]
    vague: set[str] = field(default_factory=set)
    extras: list[str] = field(default_factory=list)
    repeat: bool = False
    truncate: float | None = None  # keep this fraction of the words
    opener: str | None = None
    template: int = 0


def wrong_value(key: str, true_value: str, rng: random.Random, facts) -> str:
    """Another value of the same category, so the summary contradicts the post."""
    if key in ("narrator_age", "other_age"):
        age, gender = true_value.split()
        if rng.random() < 0.3:
            return age_tag(int(age), "F" if gender == "M" else "M")
        return age_tag(int(age) + rng.choice([-5, -4, -3, -2, 2, 3, 4, 5]), gender)
    if key == "duration":
        n, unit = true_value.split()
        return f"{int(n) + rng.choice([1, 2, 3])} {unit}"
    if key == "amount":
        n = int(true_value.split()[0][1:])
        return f"${n + rng.choice([3, 5, 10])} million"
    pool = {
        "role": sorted(r for r in V.ROLES if V.ROLES[r][0] in (None, getattr(facts, "other_gender", None))),
        "event": V.EVENTS,
        "problem": V.PROBLEMS,
        "question": V.QUESTIONS,
        "official": V.OFFICIALS,
        "person": V.SURNAMES,
        "action": V.ACTIONS,
        "place": V.NEWS_PLACES,
        "day": V.DAYS,
    }[key]
    choices = [v for v in pool if v != true_value]
    return rng.choice(choices)


def render_tldr_summary(spec: SummarySpec, facts: TldrFacts) -> str:
    v = spec.values
    sub = facts.sub if v.get("role") else "they"
    who = "I"
    if v.get("narrator_age"):
        who += f" ({v['narrator_age']})"
    other = f"my {v['role']}" if v.get("role") else "this person"
    if v.get("other_age"):
        other += f" ({v['other_age']})"
    first = f"{who} and {other}"
    if v.get("duration"):
        first += f" of {v['duration']}"
    event = V.VAGUE_EVENT[0] if "event" in spec.vague else v.get("event")
    problem = V.VAGUE_PROBLEM[0] if "problem" in spec.vague else v.get("problem")
    # The anchors of the post ("she"/"he" before the event, "Now" before the problem, "Question:" before the
    # question) start each sentence, so copying a fact is induction on the token before it.
    sentences = [first + "."]
    if event:
        sentences.append(f"Then {sub} {event}.")
    if problem:
        sentences.append(f"Now {problem}.")
    sentences.extend(spec.extras)
    if v.get("question"):
        sentences.append(f"Question: {v['question']}")
    return _finish(sentences, spec)


def render_news_summary(spec: SummarySpec, facts: NewsFacts) -> str:
    v = spec.values
    who = " ".join(x for x in (v.get("official"), v.get("person")) if x) or "An official"
    action = V.VAGUE_EVENT[1] if "action" in spec.vague else (v.get("action") or "made an announcement")
    first = f"{who} {action}"
    if v.get("place"):
        first += f" in {v['place']}"
    if v.get("day"):
        first += f" on {v['day']}"
    sentences = [first + "."]
    if v.get("amount"):
        sentences.append(f"It will cost {v['amount']}." if spec.template == 0 else f"The plan costs {v['amount']}.")
    sentences.extend(spec.extras)
    return _finish(sentences, spec)


def _finish(sentences: list[str], spec: SummarySpec) -> str:
    text = " ".join(sentences)
    if spec.opener:
        text = f"{spec.opener} {text}"
    words = text.split()
    if spec.repeat and len(words) > 4:
        # Repeat a span, the degenerate loop a weak policy falls into.
        start = len(words) // 3
        span = words[start : start + min(8, len(words) - start)]
        words = words[: start + len(span)] + span + words[start + len(span) :]
    if spec.truncate is not None:
        words = words[: max(3, int(len(words) * spec.truncate))]
    return " ".join(words)


def true_values(facts) -> dict[str, str]:
    keys = TLDR_FACT_KEYS if isinstance(facts, TldrFacts) else NEWS_FACT_KEYS
    return {k: getattr(facts, k) for k in keys}


def render_summary(spec: SummarySpec, facts) -> str:
    if isinstance(facts, TldrFacts):
        return render_tldr_summary(spec, facts)
    return render_news_summary(spec, facts)

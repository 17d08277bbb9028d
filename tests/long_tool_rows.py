"""Long tool-calling rows like a public OpenAI-format tool-use file: real-looking tool schemas,
a system prompt, a request, an assistant call, a long tool result and the final answer.

Rendered through Qwen2.5's template (tools in the system prompt) a row is ~900-1,200 tokens on
Qwen2's real vocabulary, the length at which issue 19's eval ran out of memory. Deterministic:
`long_rows(n, seed)` gives the same rows every time.
"""

from __future__ import annotations

import json
import random


def _fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required,
                       "additionalProperties": False}}}


_S = {"type": "string"}
TOOLS = [
    _fn("search_flights", "Searches one-way or return flights between two airports on given "
        "dates and returns the cheapest offers with carrier, times, stops and fare class.",
        {"origin": {**_S, "description": "IATA code of the departure airport, e.g. LHR."},
         "destination": {**_S, "description": "IATA code of the arrival airport, e.g. JFK."},
         "depart_date": {**_S, "description": "Departure date, YYYY-MM-DD."},
         "return_date": {**_S, "description": "Return date, YYYY-MM-DD; omit for one-way."},
         "cabin": {"type": "string", "enum": ["economy", "premium", "business", "first"]},
         "passengers": {"type": "integer", "minimum": 1, "maximum": 9}},
        ["origin", "destination", "depart_date"]),
    _fn("create_calendar_event", "Creates an event in the user's calendar and invites the "
        "attendees by email.",
        {"title": _S, "start": {**_S, "description": "ISO 8601 start time."},
         "end": {**_S, "description": "ISO 8601 end time."},
         "attendees": {"type": "array", "items": {**_S, "description": "Email address."}},
         "location": _S, "reminder_minutes": {"type": "integer", "minimum": 0}},
        ["title", "start", "end"]),
    _fn("send_email", "Sends an email from the user's account.",
        {"to": {"type": "array", "items": _S}, "subject": _S, "body": _S,
         "cc": {"type": "array", "items": _S}}, ["to", "subject", "body"]),
    _fn("get_weather", "Returns the forecast for a city: temperature, precipitation and wind "
        "for each of the next days.",
        {"city": _S, "days": {"type": "integer", "minimum": 1, "maximum": 10},
         "units": {"type": "string", "enum": ["metric", "imperial"]}}, ["city"]),
    _fn("lookup_customer", "Finds a customer record in the CRM by email or account id and "
        "returns the contact, plan, open tickets and last orders.",
        {"email": _S, "account_id": _S,
         "include": {"type": "array", "items": {"type": "string",
                                                 "enum": ["tickets", "orders", "notes"]}}},
        []),
    _fn("search_documents", "Full-text search over the company's documents; returns the best "
        "matching passages with title, path and score.",
        {"query": _S, "limit": {"type": "integer", "minimum": 1, "maximum": 50},
         "folder": _S}, ["query"]),
]

CITIES = [("London", "LHR"), ("New York", "JFK"), ("Paris", "CDG"), ("Tokyo", "HND"),
          ("Berlin", "BER"), ("Madrid", "MAD"), ("Toronto", "YYZ"), ("Sydney", "SYD")]
PEOPLE = ["ana.silva", "ben.okafor", "chen.wei", "dara.kim", "eli.novak", "fatima.haddad"]
CARRIERS = ["BA", "AA", "AF", "LH", "IB", "AC", "QF", "JL"]


def _flights(rng: random.Random) -> tuple[str, dict, list]:
    (a, ia), (b, ib) = rng.sample(CITIES, 2)
    day = rng.randint(1, 28)
    args = {"origin": ia, "destination": ib, "depart_date": f"2026-03-{day:02d}",
            "cabin": rng.choice(["economy", "business"]), "passengers": rng.randint(1, 3)}
    ask = (f"I need to get from {a} to {b} on March {day} for a client meeting. Find me "
           f"{args['cabin']} seats for {args['passengers']} and tell me which offer is best.")
    offers = [{"offer_id": f"OF{rng.randint(10000, 99999)}", "carrier": rng.choice(CARRIERS),
               "flight": f"{rng.choice(CARRIERS)}{rng.randint(100, 999)}",
               "departs": f"2026-03-{day:02d}T{rng.randint(6, 21):02d}:{rng.choice(['05', '35'])}",
               "duration_minutes": rng.randint(90, 900), "stops": rng.randint(0, 2),
               "fare_class": rng.choice(["Y", "B", "M", "J", "C"]),
               "price": {"amount": rng.randint(180, 4200), "currency": "USD"},
               "baggage": {"cabin_kg": 8, "checked": rng.randint(0, 2)},
               "refundable": rng.random() < 0.3} for _ in range(6)]
    return ask, args, offers


def _customer(rng: random.Random) -> tuple[str, dict, list]:
    who = rng.choice(PEOPLE)
    args = {"email": f"{who}@example.com", "include": ["tickets", "orders", "notes"]}
    ask = (f"A customer, {who}@example.com, says their last order never arrived and they were "
           "charged twice. Pull up their account and summarise what we know before I call.")
    result = [{"account_id": f"AC-{rng.randint(100000, 999999)}", "name": who.replace(".", " "),
               "plan": rng.choice(["starter", "team", "enterprise"]),
               "tickets": [{"id": f"T-{rng.randint(1000, 9999)}",
                            "subject": rng.choice(["double charge", "late delivery",
                                                   "login problem", "invoice copy"]),
                            "status": rng.choice(["open", "pending", "closed"]),
                            "opened": f"2026-02-{rng.randint(1, 28):02d}"} for _ in range(4)],
               "orders": [{"order": f"O-{rng.randint(10000, 99999)}",
                           "total": round(rng.uniform(20, 900), 2),
                           "status": rng.choice(["delivered", "in transit", "lost", "refunded"]),
                           "carrier": rng.choice(["UPS", "DHL", "FedEx"])} for _ in range(5)],
               "notes": ["Prefers email.", "Asked for a callback after 5pm.",
                         "Was offered a 10% voucher in January."]}]
    return ask, args, result


def _documents(rng: random.Random) -> tuple[str, dict, list]:
    topic = rng.choice(["travel expense policy", "on-call rotation", "data retention",
                        "parental leave", "security incident response"])
    args = {"query": topic, "limit": 5}
    ask = f"What does our {topic} say? Search the documents and give me the key rules."
    passages = [{"title": f"{topic.title()} v{rng.randint(1, 9)}",
                 "path": f"/policies/{topic.replace(' ', '_')}/{k}.md",
                 "score": round(rng.uniform(0.4, 0.99), 3),
                 "passage": " ".join(rng.choice(
                     ["Employees must", "Managers approve", "Within 30 days", "Receipts are",
                      "required for", "all claims", "above 50 USD", "the on-call engineer",
                      "escalates to", "the security team", "records are kept", "for seven years",
                      "unless the law", "requires otherwise."]) for _ in range(16))}
                for k in range(5)]
    return ask, args, passages


_TOOL = {t["function"]["name"]: t for t in TOOLS}
_KINDS = [("search_flights", _flights), ("lookup_customer", _customer),
          ("search_documents", _documents)]
SYSTEM = ("You are the operations assistant of a mid-size company. Use the tools to look things "
          "up before you answer; never invent flight numbers, prices or policy text. Keep the "
          "final answer short and name the source of each fact.")


def long_rows(n: int, seed: int = 0) -> list[dict]:
    """Returns n OpenAI-form rows (messages, three tools): one call, its long result, then a second
    call that forwards what was found by email, so the answer scored is a tool call."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        name, make = _KINDS[k % len(_KINDS)]
        ask, args, result = make(rng)
        call_id = f"call_{k:04d}"
        # The tool it calls, send_email and one other (a real file's rows carry a few tools each).
        other = rng.choice([t for t in TOOLS if t["function"]["name"] not in (name, "send_email")])
        tools = sorted([_TOOL[name], _TOOL["send_email"], other],
                       key=lambda t: t["function"]["name"])
        who = rng.choice(PEOPLE)
        email = {"to": [f"{who}@example.com"], "subject": f"{name.replace('_', ' ')} ({k})",
                 "body": f"Here is what {name.replace('_', ' ')} found; the first result is the "
                         f"best match (request {k})."}
        rows.append({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": ask + f" Then email the result to {who}@example.com."},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": call_id, "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)}}]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"{call_id}_mail", "type": "function",
                "function": {"name": "send_email", "arguments": json.dumps(email)}}]},
        ], "tools": tools})
    return rows

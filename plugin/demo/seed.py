"""Demo data: users of each role and about 10,000 synthetic contacts with tags and views."""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ..access import ensure_workspace
from ..contacts import create_view, ensure_custom_field
from ..models import Contact, ContactTag, Tag
from .models import User

DEMO_USERS = (
    ("admin", "admin", "管理员 Admin", "admin"),
    ("marketer", "marketer", "市场 Marketer", "marketer"),
    ("sales", "sales", "销售 Sales", "sales"),
)

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国志强海燕晓东"
FIRST = [
    "James",
    "Mary",
    "John",
    "Linda",
    "David",
    "Emma",
    "Lucas",
    "Sofia",
    "Noah",
    "Olivia",
    "Hans",
    "Anna",
    "Pierre",
    "Marie",
    "Carlos",
    "Lucia",
    "Ahmed",
    "Fatima",
    "Ivan",
    "Olga",
]
LAST = [
    "Smith",
    "Müller",
    "Garcia",
    "Rossi",
    "Dubois",
    "Silva",
    "Kowalski",
    "Ivanov",
    "Khan",
    "Tanaka",
    "Brown",
    "Wilson",
    "Schmidt",
    "Martin",
    "Lopez",
]
FREE_DOMAINS = ["qq.com", "163.com", "126.com", "sina.com", "foxmail.com", "yeah.net", "sohu.com"]
INTL_FREE = ["gmail.com", "outlook.com", "yahoo.com", "hotmail.com"]
ROLE_PREFIXES = ["info", "sales", "support", "noreply", "ticket", "admin", "service", "marketing"]
COUNTRIES = [
    "China",
    "Germany",
    "United States",
    "Brazil",
    "India",
    "Vietnam",
    "Spain",
    "Italy",
    "France",
    "United Kingdom",
    "Mexico",
    "Turkey",
]
INDUSTRIES = ["机械 Machinery", "纺织 Textiles", "电子 Electronics", "化工 Chemicals", "家具 Furniture"]
TAGS = [
    "广交会 Canton Fair",
    "老客户 Existing customer",
    "潜在客户 Prospect",
    "经销商 Distributor",
    "展会2026 Expo 2026",
    "VIP",
    "退订风险 At risk",
]
SOURCES = ["website", "expo", "linkedin", "referral", "import"]


def _contact(rng: random.Random, n: int) -> dict:
    chinese = rng.random() < 0.5
    if chinese:
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
        local = f"user{n}"
    else:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        local = f"{first.lower()}.{last.lower().replace('ü', 'u')}{n}"
    roll = rng.random()
    if roll < 0.08:
        local = f"{rng.choice(ROLE_PREFIXES)}{n}" if rng.random() < 0.5 else rng.choice(ROLE_PREFIXES)
    if roll < 0.35:
        domain = rng.choice(FREE_DOMAINS if chinese else INTL_FREE)
    else:
        company_slug = f"co{rng.randrange(1, 1500)}"
        domain = f"{company_slug}.{rng.choice(['com', 'cn', 'de', 'com.br', 'in', 'co.uk'])}"
    email = f"{local}@{domain}".lower()
    local_part, _, domain_part = email.partition("@")
    return {
        "email": email,
        "email_local": local_part,
        "email_domain": domain_part,
        "name": name,
        "company": None
        if "@" in email and domain in FREE_DOMAINS + INTL_FREE
        else f"{domain.split('.')[0].upper()} Ltd.",
        "country": "China" if chinese and rng.random() < 0.7 else rng.choice(COUNTRIES),
        "owner_id": str(rng.choice([2, 3])),
        "custom": {"industry": rng.choice(INDUSTRIES), "source": rng.choice(SOURCES)},
        "created_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        + dt.timedelta(minutes=rng.randrange(0, 1_000_000)),
    }


def seed_demo(session: Session, *, contacts: int = 10_000, seed: int = 20261123) -> bool:
    """Create users, contacts, tags and views unless users already exist; returns whether it did."""
    if session.scalar(select(User.id).limit(1)) is not None:
        return False
    for username, password, display, role in DEMO_USERS:
        user = User(username=username, display_name=display, role=role, organization="default")
        user.set_password(password)
        session.add(user)
    workspace = ensure_workspace(session, "default")
    ws = workspace.id
    rng = random.Random(seed)
    rows, seen = [], set()
    n = 0
    while len(rows) < contacts:
        n += 1
        row = _contact(rng, n)
        if row["email"] in seen:
            continue
        seen.add(row["email"])
        rows.append({"workspace_id": ws, "updated_at": row["created_at"], **row})
    for start in range(0, len(rows), 1000):
        session.execute(insert(Contact), rows[start : start + 1000])
    tag_ids = []
    for name in TAGS:
        tag = Tag(workspace_id=ws, name=name)
        session.add(tag)
        session.flush()
        tag_ids.append(tag.id)
    ids = session.scalars(select(Contact.id).where(Contact.workspace_id == ws).order_by(Contact.id)).all()
    links = []
    for contact_id in ids:
        for tag_id in rng.sample(tag_ids, rng.choice([0, 1, 1, 2, 3])):
            links.append({"contact_id": contact_id, "tag_id": tag_id})
    for start in range(0, len(links), 2000):
        session.execute(insert(ContactTag), links[start : start + 2000])
    ensure_custom_field(session, ws, "industry", "行业 Industry")
    ensure_custom_field(session, ws, "source", "来源 Source")
    create_view(
        session,
        ws,
        name="国内免费邮箱 Domestic free mailboxes",
        rules={
            "match": "all",
            "rules": [
                {"field": "email_domain", "op": "in", "value": [*FREE_DOMAINS, "139.com", "aliyun.com"]}
            ],
        },
    )
    create_view(
        session,
        ws,
        name="角色地址 Role addresses",
        rules={"match": "all", "rules": [{"field": "email_local", "op": "in", "value": ROLE_PREFIXES}]},
    )
    create_view(
        session,
        ws,
        name="德国机械 German machinery",
        rules={
            "match": "all",
            "rules": [
                {"field": "country", "op": "eq", "value": "Germany"},
                {"field": "custom.industry", "op": "contains", "value": "Machinery"},
            ],
        },
    )
    session.commit()
    return True

"""The onboarding wizard: binding a workspace to SendCloud, as a state machine over the database.

Six steps — domain, credentials, dns, api_users, senders, done — stored in ``SetupState.step``
(the furthest step reached), so an admin can leave and come back on any machine, and every step
may be submitted again without creating anything twice: the domain and the API_USERs are looked
up at SendCloud before anything is added, and the webhook is registered only if it is not there.

The service talks to SendCloud and DNS through injected factories (the tests and the demo point
them at the local simulator and DNS responder), never imports Flask, and never commits: the caller
commits after a step succeeded and rolls back when it raised, so a failed step leaves nothing
half-written.  Secrets are encrypted with the ``SecretBox`` before they touch a model and are
never put into exceptions, notes or log records.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets as token_source
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import requests
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from . import senders, webhooks
from .config import Settings
from .crypto import SecretBox
from .errors import (
    AuthenticationFailed,
    DnsCheckError,
    InvalidInput,
    InvalidTransition,
    NotFound,
    ProviderError,
)
from .i18n import _
from .models import (
    AccountSnapshot,
    ProviderAccount,
    QuotaLedger,
    Sender,
    SendingDomain,
    SetupState,
    utcnow,
)

STEPS: tuple[str, ...] = ("domain", "credentials", "dns", "api_users", "senders", "done")
#: Records that must resolve before API_USERs can be bound; DMARC is advice only.
REQUIRED_PURPOSES: tuple[str, ...] = ("ownership", "spf", "dkim", "mx")
REPLY_TO_SALT = "marketing-reply-to"
REPLY_TO_MAX_AGE = dt.timedelta(days=7)
#: SendCloud's "API_USER already exists" status code.
API_USER_EXISTS = 41119
_API_USER_RE = re.compile(r"^[A-Za-z0-9_]{6,32}$")

ClientFactory = Callable[[str, str], Any]
ProviderFactory = Callable[[str, str], Any]
ResolverFactory = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class DomainReview:
    """What the wizard found out about a proposed sending domain."""

    name: str
    is_apex: bool
    has_mx: bool
    mx_hosts: tuple[str, ...]
    #: ``newsletter.<registrable domain>`` when the name looks like company mail's domain.
    suggestion: str | None
    saved: bool = False

    @property
    def has_warnings(self) -> bool:
        return self.is_apex or self.has_mx


@dataclasses.dataclass(frozen=True)
class StepStatus:
    key: str
    number: int
    #: ``done``, ``current`` or ``todo``; ``reachable`` says whether its page can be opened.
    status: str
    reachable: bool


class SetupWizard:
    """One workspace's onboarding; every public method is one step's action."""

    def __init__(
        self,
        session: Session,
        workspace_id: int,
        settings: Settings,
        secrets: SecretBox,
        *,
        client_factory: ClientFactory | None = None,
        provider_factory: ProviderFactory | None = None,
        resolver_factory: ResolverFactory | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.session = session
        self.workspace_id = int(workspace_id)
        self.settings = settings
        self.secrets = secrets
        self._client_factory = client_factory or self._default_client
        self._provider_factory = provider_factory or self._default_provider
        self._resolver_factory = resolver_factory or self._default_resolver
        self._clock = clock

    # -- collaborators -------------------------------------------------------------------------
    def _default_client(self, api_user: str, api_key: str) -> Any:
        from .providers.sendcloud import SendCloudClient

        return SendCloudClient(
            api_user,
            api_key,
            base_url=self.settings.sendcloud_api_base,
            timeout=self.settings.provider_timeout,
        )

    def _default_provider(self, api_user: str, api_key: str) -> Any:
        from .providers.sendcloud import SendCloudProvider

        return SendCloudProvider(
            api_user,
            api_key,
            base_url=self.settings.sendcloud_api_base,
            timeout=self.settings.provider_timeout,
        )

    def _default_resolver(self) -> Any:
        from .dns_check import ResolverConfig

        return ResolverConfig.from_settings(self.settings)

    def _client(self) -> Any:
        """A client for the main API_USER of the stored account."""
        account = self.account()
        if account is None or not account.api_key_encrypted or not account.api_user:
            raise InvalidTransition(_("Enter and verify the API_USER and API_KEY first."))
        return self._client_factory(account.api_user, self.secrets.decrypt(account.api_key_encrypted))

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> SetupState:
        """The workspace's wizard state, created at the first step the first time."""
        row = self.session.scalar(select(SetupState).where(SetupState.workspace_id == self.workspace_id))
        if row is None:
            row = SetupState(workspace_id=self.workspace_id, step="domain", notes={})
            self.session.add(row)
            self.session.flush()
        return row

    def current_step(self) -> str:
        return self.state().step

    def is_completed(self) -> bool:
        return self.state().completed_at is not None

    def reachable(self, step: str) -> bool:
        """Earlier steps can be revisited; later ones only once the earlier ones are done."""
        if step not in STEPS:
            return False
        return STEPS.index(step) <= STEPS.index(self.current_step())

    def steps(self) -> list[StepStatus]:
        current = STEPS.index(self.current_step())
        completed = self.is_completed()
        out = []
        for number, key in enumerate(STEPS, start=1):
            index = number - 1
            if index < current or (completed and key == "done"):
                status = "done"
            elif index == current:
                status = "current"
            else:
                status = "todo"
            out.append(StepStatus(key=key, number=number, status=status, reachable=index <= current))
        return out

    def _advance(self, to_step: str) -> None:
        """Move the furthest step forward to ``to_step`` (never backwards)."""
        state = self.state()
        if STEPS.index(to_step) > STEPS.index(state.step):
            state.step = to_step

    def _require(self, step: str) -> SetupState:
        state = self.state()
        if not self.reachable(step):
            raise InvalidTransition(
                _(
                    "Finish the earlier steps first (the wizard is at step %(n)s).",
                    n=STEPS.index(state.step) + 1,
                )
            )
        return state

    def _set_notes(self, **values: Any) -> None:
        state = self.state()
        notes = dict(state.notes or {})
        notes.update(values)
        state.notes = notes

    def account(self) -> ProviderAccount | None:
        state = self.state()
        if state.account_id is not None:
            account = self.session.get(ProviderAccount, state.account_id)
            if account is not None and account.workspace_id == self.workspace_id:
                return account
        return None

    def domain(self) -> SendingDomain | None:
        state = self.state()
        if state.domain_id is not None:
            domain = self.session.get(SendingDomain, state.domain_id)
            if domain is not None and domain.workspace_id == self.workspace_id:
                return domain
        return None

    def sender(self) -> Sender | None:
        return self.session.scalar(
            select(Sender)
            .where(Sender.workspace_id == self.workspace_id)
            .order_by(Sender.is_default.desc(), Sender.id)
            .limit(1)
        )

    def domain_locked(self) -> bool:
        """Once the domain is registered at SendCloud the binding cannot change (purge instead)."""
        return self.domain() is not None

    # -- step 1: the sending domain ------------------------------------------------------------
    def review_domain(self, raw_name: str) -> DomainReview:
        """Validate the name and look at its DNS: is it an apex, does it already receive mail?"""
        from . import dns_check

        name = _validate_domain_name(raw_name)
        try:
            facts = dns_check.domain_facts(name, self._resolver_factory())
        except DnsCheckError:
            facts = None
        is_apex = bool(getattr(facts, "is_apex", False))
        has_mx = bool(getattr(facts, "has_mx", False))
        mx_hosts = tuple(getattr(facts, "mx_hosts", ()) or ())
        suggestion = None
        if is_apex or has_mx:
            suggestion = f"newsletter.{_registrable(name, facts)}"
            if suggestion == name:
                suggestion = None
        return DomainReview(
            name=name, is_apex=is_apex, has_mx=has_mx, mx_hosts=mx_hosts, suggestion=suggestion
        )

    def submit_domain(
        self, raw_name: str, *, confirmed: bool, warnings_acknowledged: bool = True
    ) -> DomainReview:
        """Step 1: store the sending domain once the admin confirmed the binding is permanent.

        With warnings (apex, existing MX) and ``warnings_acknowledged`` false, nothing is saved:
        the page shows the warnings and asks again, so nobody binds company mail's domain by a
        slip.
        """
        state = self._require("domain")
        review = self.review_domain(raw_name)
        locked = self.domain()
        if locked is not None and locked.name != review.name:
            raise InvalidInput(
                _(
                    "The binding to %(domain)s cannot be changed. Unbind and purge it to use another domain.",
                    domain=locked.name,
                ),
                field="domain",
            )
        if review.has_warnings and not warnings_acknowledged:
            return review
        if not confirmed:
            raise InvalidInput(
                _("Confirm that you understand the binding cannot be changed later."), field="confirm"
            )
        if state.domain_name != review.name:
            state.domain_name = review.name
        state.domain_confirmed_at = state.domain_confirmed_at or self._clock()
        self._set_notes(
            domain={
                "is_apex": review.is_apex,
                "has_mx": review.has_mx,
                "mx_hosts": list(review.mx_hosts),
                "suggestion": review.suggestion,
            }
        )
        self._advance("credentials")
        self.session.flush()
        return dataclasses.replace(review, saved=True)

    # -- step 2: credentials -------------------------------------------------------------------
    def submit_credentials(self, api_user: str, api_key: str | None) -> Any:
        """Step 2: verify API_USER/API_KEY live (``userinfo/get``) and store them, key encrypted.

        An empty key means "keep the stored one" (the page never shows it back), which lets an
        admin re-verify without pasting the key again.
        """
        state = self._require("credentials")
        api_user = (api_user or "").strip()
        api_key = (api_key or "").strip()
        if not api_user:
            raise InvalidInput(_("Enter the API_USER from the SendCloud console."), field="api_user")
        if len(api_user) > 120 or any(ch.isspace() for ch in api_user):
            raise InvalidInput(_("An API_USER has no spaces and at most 120 characters."), field="api_user")
        account = self.account()
        if account is not None and self.domain_locked() and account.api_user != api_user:
            raise InvalidInput(
                _(
                    "The binding to %(user)s cannot be changed. Unbind and purge it to use another account.",
                    user=account.api_user,
                ),
                field="api_user",
            )
        if not api_key:
            if account is None or account.api_user != api_user or not account.api_key_encrypted:
                raise InvalidInput(_("Enter the API_KEY of this API_USER."), field="api_key")
            api_key = self.secrets.decrypt(account.api_key_encrypted)
        info = _call(
            lambda: _with_client(self._client_factory(api_user, api_key), lambda c: c.userinfo()),
            auth_field="api_key",
        )
        if account is None:
            account = ProviderAccount(workspace_id=self.workspace_id, kind="sendcloud", name=api_user)
            self.session.add(account)
        account.kind = "sendcloud"
        account.name = (info.account_name or api_user)[:120]
        account.api_user = api_user
        account.api_key_encrypted = self.secrets.encrypt(api_key)
        account.status = "active"
        self.session.flush()
        state.account_id = account.id
        self._record_snapshot(account, info)  # the account bar shows the figures from now on
        self._set_notes(account=_account_note(info))
        self._advance("dns")
        self.session.flush()
        return info

    # -- step 3: the domain at SendCloud and its DNS records -----------------------------------
    def register_domain(self) -> SendingDomain:
        """Find the domain at SendCloud or add it, and keep the records it asks for."""
        state = self._require("dns")
        if not state.domain_name:
            raise InvalidTransition(_("Choose the sending domain first."))
        account = self.account()
        if account is None:
            raise InvalidTransition(_("Enter and verify the API_USER and API_KEY first."))
        client = self._client()

        def _find_or_add(c: Any) -> Any:
            for info in c.domain_list(state.domain_name):
                if info.name.lower() == state.domain_name.lower():
                    return info
            return c.domain_add(state.domain_name)

        info = _call(lambda: _with_client(client, _find_or_add))
        domain = self.domain() or self.session.scalar(
            select(SendingDomain).where(
                SendingDomain.workspace_id == self.workspace_id, SendingDomain.name == state.domain_name
            )
        )
        if domain is None:
            domain = SendingDomain(workspace_id=self.workspace_id, name=state.domain_name, status="pending")
            self.session.add(domain)
        domain.account_id = account.id
        domain.dns_records = [_record_dict(r) for r in info.records]
        self.session.flush()
        state.domain_id = domain.id
        self.session.flush()
        return domain

    def records(self) -> list[Any]:
        """The stored records as ``providers.sendcloud.DnsRecord`` values."""
        from .providers.sendcloud import DnsRecord

        domain = self.domain()
        if domain is None:
            return []
        fields = {f.name for f in dataclasses.fields(DnsRecord)}
        return [
            DnsRecord(**{k: v for k, v in rec.items() if k in fields}) for rec in domain.dns_records or []
        ]

    def check_dns(self) -> list[Any]:
        """Resolve every record now, store the result, and mark the domain verified when the
        required ones pass."""
        from . import dns_check

        self._require("dns")
        domain = self.domain() or self.register_domain()
        checks = dns_check.check_records(self.records(), self._resolver_factory())
        domain.last_check = [_check_dict(c) for c in checks]
        domain.checked_at = self._clock()
        if _required_pass(domain.last_check):
            domain.status = "verified"
            domain.verified_at = domain.verified_at or self._clock()
        else:
            domain.status = "pending"
            domain.verified_at = None
        self.session.flush()
        return checks

    def dns_ready(self) -> bool:
        domain = self.domain()
        return domain is not None and _required_pass(domain.last_check or [])

    def finish_dns(self) -> None:
        """Leave step 3: only when ownership, SPF, DKIM and MX pass (checked now, not cached)."""
        self._require("dns")
        self.check_dns()
        if not self.dns_ready():
            failing = [
                c["purpose"]
                for c in self.domain().last_check
                if c["purpose"] in REQUIRED_PURPOSES and c["status"] != "pass"
            ]
            raise InvalidInput(
                _("These records do not resolve correctly yet: %(names)s.", names=", ".join(failing).upper()),
                field="dns",
            )
        self._advance("api_users")
        self.session.flush()

    # -- step 4: API_USERs and webhook ---------------------------------------------------------
    def api_user_prefix(self) -> str:
        """``<domain labels>`` squeezed to ``[A-Za-z0-9_]``, short enough for ``_trigger``."""
        name = self.state().domain_name or "marketing"
        prefix = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "marketing"
        return prefix[:22].rstrip("_") or "marketing"

    def setup_api_users(self) -> tuple[str, str]:
        """Bind a batch and a trigger API_USER to the domain: reuse ours, else create them.

        An API_USER can only be reused when we hold its key (SendCloud shows a key only when it
        is created), so a same-named user we have no key for gets a numbered sibling.
        """
        state = self._require("api_users")
        account = self.account()
        domain = self.domain()
        if account is None or domain is None:
            raise InvalidTransition(_("Register the domain at SendCloud first."))
        client = self._client()
        names: dict[str, str] = {}
        try:
            existing = _call(lambda: client.apiuser_list(domain.name))
            taken = {u.name for u in existing}
            for kind in ("batch", "trigger"):
                stored_name = getattr(account, f"{kind}_api_user")
                stored_key = getattr(account, f"{kind}_api_key_encrypted")
                match = next(
                    (
                        u
                        for u in existing
                        if u.name == stored_name
                        and u.email_type == kind
                        and (u.domain or domain.name).lower() == domain.name.lower()
                    ),
                    None,
                )
                if match is not None and stored_key:
                    names[kind] = match.name
                    continue
                info, new_key = self._add_api_user(client, kind, domain.name, taken)
                taken.add(info.name)
                setattr(account, f"{kind}_api_user", info.name)
                setattr(account, f"{kind}_api_key_encrypted", self.secrets.encrypt(new_key))
                names[kind] = info.name
                # Commit each key as soon as it exists: SendCloud will not show it again, and an
                # error creating the next user rolls back whatever is only flushed.
                self.session.commit()
        finally:
            _close(client)
        self._set_notes(api_users={"batch": names["batch"], "trigger": names["trigger"]})
        self.session.flush()
        del state
        return names["batch"], names["trigger"]

    def _add_api_user(self, client: Any, kind: str, domain_name: str, taken: set[str]) -> tuple[Any, str]:
        """``apiuser/add`` with the first free name; names are unique across all of SendCloud,
        so a name another account holds (41119) moves on to the next number."""
        for _attempt in range(5):
            name = _free_name(self.api_user_prefix(), kind, taken)
            try:
                return client.apiuser_add(name, kind, domain_name)
            except ProviderError as exc:
                if exc.status_code != API_USER_EXISTS:
                    return _call(lambda exc=exc: _raise(exc))
                taken.add(name)
        name = _free_name(self.api_user_prefix(), kind, taken)
        return _call(lambda: client.apiuser_add(name, kind, domain_name))

    def webhook_url(self) -> str:
        return webhooks.webhook_url(self.settings, self.workspace_id)

    def register_webhook(self, app_key: str | None) -> str:
        """Store the webhook APP KEY (from SendCloud's console) and register our URL once."""
        self._require("api_users")
        account = self.account()
        if account is None:
            raise InvalidTransition(_("Enter and verify the API_USER and API_KEY first."))
        app_key = _valid_app_key(account, app_key)
        if app_key:
            account.webhook_app_key_encrypted = self.secrets.encrypt(app_key)
            webhooks.forget_health(account)  # what was seen under the old key says nothing of this one
        url = self.webhook_url()
        client = self._client()
        try:
            hooks = _call(lambda: client.webhook_list())
            if not any(_hook_url(h) == url for h in hooks):
                _call(lambda: client.webhook_add(url))
        finally:
            _close(client)
        account.webhook_url = url
        account.webhook_registered_at = account.webhook_registered_at or self._clock()
        self.session.flush()
        return url

    def finish_api_users(self, app_key: str | None) -> None:
        """Step 4 in one go: API_USERs, then the webhook; the wizard moves on to senders.

        The APP KEY is checked before anything is created at SendCloud, and new API_USERs are
        committed as soon as they exist: SendCloud shows a new user's key only once, so a form
        error or a failed webhook call rolled back keys it had already handed over, and every
        retry created two more users (an account holds ten)."""
        account = self.account()
        if account is not None:
            _valid_app_key(account, app_key)
        self.setup_api_users()  # commits each new API_USER's key as it is created
        self.session.commit()
        self.register_webhook(app_key)
        self._advance("senders")
        self.session.flush()

    # -- step 5: senders -----------------------------------------------------------------------
    def submit_sender(
        self,
        *,
        from_address: str,
        from_name: str,
        reply_to: str,
        company_name: str,
        postal_address: str,
    ) -> Sender:
        """Store the default sender; a new or changed reply-to gets a confirmation mail."""
        state = self._require("senders")
        domain = self.domain()
        if domain is None:
            raise InvalidTransition(_("Register the domain at SendCloud first."))
        clean, _domain = senders.load(
            {
                "from_address": from_address,
                "from_name": from_name,
                "reply_to": reply_to,
                "company_name": company_name,
                "postal_address": postal_address,
            },
            [domain],
        )
        address, reply = clean["from_address"], clean["reply_to"]
        from_name, company_name = clean["from_name"], clean["company_name"]
        postal_address = clean["postal_address"]
        sender = self.sender()
        if sender is None:
            sender = Sender(workspace_id=self.workspace_id, from_address=address, is_default=True)
            self.session.add(sender)
        sender.domain_id = domain.id
        sender.from_address = address
        sender.from_name = from_name
        sender.company_name = company_name
        sender.postal_address = postal_address
        sender.is_default = True
        if sender.reply_to != reply:
            sender.reply_to = reply
            sender.reply_to_verified_at = None
            sender.reply_to_verification_sent_at = None
        self.session.flush()
        if sender.reply_to_verified_at is None and sender.reply_to_verification_sent_at is None:
            self.send_reply_to_confirmation(sender)
        del state
        return sender

    def reply_to_token(self, sender: Sender) -> str:
        serializer = URLSafeTimedSerializer(self.settings.token_secret, salt=REPLY_TO_SALT)
        return str(serializer.dumps({"w": self.workspace_id, "s": sender.id, "e": sender.reply_to}))

    def reply_to_link(self, sender: Sender) -> str:
        return (
            f"{self.settings.public_base_url}{self.settings.public_url_prefix}/confirm-reply-to/"
            f"{self.reply_to_token(sender)}"
        )

    def send_reply_to_confirmation(self, sender: Sender | None = None) -> None:
        """Mail the confirmation link to the reply-to address through the trigger API_USER."""
        from .providers.base import BatchMessage, Recipient

        self._require("senders")
        sender = sender or self.sender()
        if sender is None or not sender.reply_to:
            raise InvalidTransition(_("Save the sender first."))
        if sender.reply_to_verified_at is not None:
            return
        account = self.account()
        if account is None or not account.trigger_api_user or not account.trigger_api_key_encrypted:
            raise InvalidTransition(_("Create the API_USERs first (step 4)."))
        now = self._clock()
        link = self.reply_to_link(sender)
        subject = _("Confirm %(address)s as the reply-to address", address=sender.reply_to)
        html = _reply_to_html(link, sender)
        message = BatchMessage(
            from_address=sender.from_address,
            from_name=sender.from_name,
            subject=subject,
            html=html,
            text=_("Open this link to confirm the reply-to address: %(link)s", link=link),
            recipients=[Recipient(email=sender.reply_to)],
            idempotency_key=f"mkt-reply-to-{self.workspace_id}-{sender.id}-{int(now.timestamp() * 1000)}",
            kind="trigger",
        )
        provider = self._provider_factory(
            account.trigger_api_user, self.secrets.decrypt(account.trigger_api_key_encrypted)
        )
        try:
            result = _call(lambda: provider.send_one(message))
        finally:
            _close(provider)
        if getattr(result, "status", "accepted") not in ("accepted", "unknown"):
            raise InvalidInput(
                _(
                    "SendCloud did not accept the confirmation mail: %(error)s",
                    error=result.error or result.status,
                ),
                field="reply_to",
            )
        sender.reply_to_verification_sent_at = now
        from . import counters

        counters.count_outside_campaigns(
            self.session,
            self.workspace_id,
            sender.reply_to,
            accepted=getattr(result, "status", "accepted") == "accepted",
        )
        self.session.flush()

    def finish_senders(self) -> None:
        self._require("senders")
        sender = self.sender()
        if sender is None:
            raise InvalidInput(_("Save the sender first."), field="from_address")
        if sender.reply_to_verified_at is None:
            raise InvalidInput(
                _(
                    "Waiting for the confirmation of %(address)s: open the link in that mailbox.",
                    address=sender.reply_to,
                ),
                field="reply_to",
            )
        self._advance("done")
        self.session.flush()

    # -- step 6: done --------------------------------------------------------------------------
    def finish(self) -> AccountSnapshot:
        """Sync balance and quota from SendCloud and mark the wizard completed."""
        state = self._require("done")
        account = self.account()
        if account is None:
            raise InvalidTransition(_("Enter and verify the API_USER and API_KEY first."))
        client = self._client()
        info = _call(lambda: _with_client(client, lambda c: c.userinfo()))
        snapshot = self._record_snapshot(account, info)
        self._set_notes(account=_account_note(info))
        state.completed_at = state.completed_at or self._clock()
        self.session.flush()
        return snapshot

    def _record_snapshot(self, account: ProviderAccount, info: Any) -> AccountSnapshot:
        """Balance and quota as ``userinfo/get`` just gave them."""
        snapshot = AccountSnapshot(
            workspace_id=self.workspace_id,
            account_id=account.id,
            balance=info.balance,
            available_balance=info.available_balance,
            daily_quota=info.daily_quota,
            used_today=info.used_today,
            reputation=info.reputation,
            fetched_at=self._clock(),
        )
        self.session.add(snapshot)
        return snapshot

    def latest_snapshot(self) -> AccountSnapshot | None:
        account = self.account()
        if account is None:
            return None
        return self.session.scalar(
            select(AccountSnapshot)
            .where(
                AccountSnapshot.workspace_id == self.workspace_id, AccountSnapshot.account_id == account.id
            )
            .order_by(AccountSnapshot.fetched_at.desc(), AccountSnapshot.id.desc())
            .limit(1)
        )

    # -- unbind and purge ----------------------------------------------------------------------
    def purge(self, typed_name: str) -> None:
        """Delete this workspace's binding (account, domain, senders, wizard state), nothing else."""
        state = self.state()
        expected = (state.domain_name or "").strip().lower()
        if not expected or (typed_name or "").strip().lower() != expected:
            raise InvalidInput(_("Type the domain name exactly to confirm."), field="confirm_name")
        ws = self.workspace_id
        account_ids = select(ProviderAccount.id).where(ProviderAccount.workspace_id == ws)
        for statement in (
            delete(Sender).where(Sender.workspace_id == ws),
            delete(SetupState).where(SetupState.workspace_id == ws),
            delete(SendingDomain).where(SendingDomain.workspace_id == ws),
            delete(AccountSnapshot).where(
                AccountSnapshot.workspace_id == ws, AccountSnapshot.account_id.in_(account_ids)
            ),
            delete(QuotaLedger).where(
                QuotaLedger.workspace_id == ws, QuotaLedger.account_id.in_(account_ids)
            ),
            delete(ProviderAccount).where(
                ProviderAccount.workspace_id == ws, ProviderAccount.kind == "sendcloud"
            ),
        ):
            self.session.execute(statement.execution_options(synchronize_session=False))
        self.session.expire_all()
        self.session.flush()


def confirm_reply_to(
    session: Session, settings: Settings, token: str, *, now: dt.datetime | None = None
) -> Sender:
    """Mark a sender's reply-to verified from the signed link in the confirmation mail."""
    serializer = URLSafeTimedSerializer(settings.token_secret, salt=REPLY_TO_SALT)
    try:
        data = serializer.loads(token, max_age=int(REPLY_TO_MAX_AGE.total_seconds()))
    except SignatureExpired as exc:
        raise InvalidInput(
            _("This confirmation link has expired; ask for a new one in the setup page.")
        ) from exc
    except BadSignature as exc:
        raise NotFound("unknown confirmation link") from exc
    if not isinstance(data, dict):
        raise NotFound("unknown confirmation link")
    sender = session.scalar(
        select(Sender).where(Sender.id == data.get("s"), Sender.workspace_id == data.get("w"))
    )
    if sender is None or sender.reply_to != data.get("e"):
        raise NotFound("this link belongs to an address that is no longer the reply-to address")
    if sender.reply_to_verified_at is None:
        sender.reply_to_verified_at = now or utcnow()
        session.flush()
    return sender


def peek_reply_to(settings: Settings, token: str) -> str | None:
    """The address a confirmation link is for (to show it before the admin confirms)."""
    serializer = URLSafeTimedSerializer(settings.token_secret, salt=REPLY_TO_SALT)
    try:
        data = serializer.loads(token, max_age=int(REPLY_TO_MAX_AGE.total_seconds()))
    except BadSignature:
        return None
    return data.get("e") if isinstance(data, dict) else None


def mask_secret(stored: str | None) -> str:
    """``••••`` plus a hint that a value is stored; never the value itself."""
    return "••••" if stored else ""


def mask_last4(secret: str | None) -> str:
    """``••••abcd`` for a plaintext secret the page may hint at (decrypted only for this)."""
    if not secret:
        return ""
    return "••••" + secret[-4:] if len(secret) > 8 else "••••"


# -- helpers ----------------------------------------------------------------------------------
def _validate_domain_name(raw: str) -> str:
    """The normalized name, or :class:`InvalidInput` on field ``domain`` saying what is wrong."""
    from . import dns_check

    candidate = (raw or "").strip()
    if not candidate:
        raise InvalidInput(_("Enter the sending domain, for example newsletter.example.com."), field="domain")
    try:
        result = dns_check.validate_domain_name(candidate)
    except InvalidInput as exc:
        raise InvalidInput(str(exc), field="domain") from exc
    except ValueError as exc:
        raise InvalidInput(str(exc), field="domain") from exc
    if isinstance(result, str) and result:
        # Either the normalized name or an error message: a valid name has no spaces.
        if " " not in result.strip():
            return _deliverable(result.strip().lower().rstrip("."))
        raise InvalidInput(result, field="domain")
    if isinstance(result, list | tuple) and result:
        raise InvalidInput(str(result[0]), field="domain")
    if result is False:
        raise InvalidInput(_("Use letters, digits, hyphens and dots only."), field="domain")
    return _deliverable(candidate.lower().rstrip("."))


def _deliverable(name: str) -> str:
    """Refuse a name under a special-use suffix (.test, .local, .invalid...) here, in step 1:
    the sender step would refuse every address at it, with no way back but unbinding."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    labels = name.split(".")
    if any(".".join(labels[i:]) in SPECIAL_USE_DOMAIN_NAMES for i in range(len(labels))):
        raise InvalidInput(
            _(
                "%(name)s is reserved for tests or local networks (.test, .local, .invalid, "
                ".localhost...): mail cannot be sent from it. Use a domain you own.",
                name=name,
            ),
            field="domain",
        )
    return name


def _registrable(name: str, facts: Any) -> str:
    for attr in ("registrable", "apex"):
        value = getattr(facts, attr, None)
        if value:
            return str(value)
    try:
        from publicsuffixlist import PublicSuffixList

        return PublicSuffixList().privatesuffix(name) or name
    except Exception:  # pragma: no cover - bundled list missing
        return name


def _with_client(client: Any, action: Callable[[Any], Any]) -> Any:
    try:
        return action(client)
    finally:
        _close(client)


def _close(thing: Any) -> None:
    close = getattr(thing, "close", None)
    if callable(close):
        close()


def _valid_app_key(account: ProviderAccount, app_key: str | None) -> str:
    """The webhook APP KEY as typed (stripped), ``""`` to keep the stored one; InvalidInput
    beside the field when it cannot be a key or none is stored yet."""
    app_key = (app_key or "").strip()
    if app_key and (len(app_key) > 200 or any(ch.isspace() for ch in app_key)):
        raise InvalidInput(_("The APP KEY has no spaces and at most 200 characters."), field="app_key")
    if not app_key and not account.webhook_app_key_encrypted:
        raise InvalidInput(
            _("Paste the webhook APP KEY shown on SendCloud's WebHook settings page."), field="app_key"
        )
    return app_key


def _call(action: Callable[[], Any], *, auth_field: str | None = None) -> Any:
    """Run one provider call and turn its failures into messages a person can act on."""
    try:
        return action()
    except AuthenticationFailed as exc:
        raise InvalidInput(
            _("SendCloud refused this API_USER/API_KEY pair. Copy both again from the SendCloud console."),
            field=auth_field or "api_key",
        ) from exc
    except ProviderError as exc:
        if exc.retryable or exc.status_code is None:
            raise InvalidInput(
                _(
                    "SendCloud could not be reached or did not answer (%(error)s). Try again in a moment.",
                    error=_scrub(str(exc)),
                ),
            ) from exc
        raise InvalidInput(_("SendCloud refused the request: %(error)s", error=_scrub(str(exc)))) from exc
    except (requests.RequestException, OSError) as exc:
        raise InvalidInput(
            _(
                "SendCloud could not be reached (%(error)s). Check the network and try again.",
                error=type(exc).__name__,
            ),
        ) from exc


def _raise(exc: BaseException) -> Any:
    raise exc


def _scrub(message: str) -> str:
    """Provider messages may echo request URLs; keep them short and free of query strings."""
    return re.sub(r"\?[^\s'\"]*", "", message)[:300]


def _record_dict(record: Any) -> dict[str, Any]:
    data = dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)
    return {k: v for k, v in data.items() if v is not None or k == "priority"}


def _check_dict(check: Any) -> dict[str, Any]:
    data = dataclasses.asdict(check) if dataclasses.is_dataclass(check) else dict(check)
    data["found"] = list(data.get("found") or ())
    return data


def _required_pass(last_check: Sequence[dict[str, Any]]) -> bool:
    by_purpose: dict[str, list[str]] = {}
    for check in last_check:
        by_purpose.setdefault(check.get("purpose", ""), []).append(check.get("status", ""))
    return all(p in by_purpose and all(s == "pass" for s in by_purpose[p]) for p in REQUIRED_PURPOSES)


def _account_note(info: Any) -> dict[str, Any]:
    def num(value: Any) -> Any:
        return str(value) if isinstance(value, Decimal) else value

    return {
        "name": info.account_name,
        "type": info.account_type,
        "balance": num(info.balance),
        "available_balance": num(info.available_balance),
        "daily_quota": info.daily_quota,
        "used_today": info.used_today,
    }


def _free_name(prefix: str, kind: str, taken: set[str]) -> str:
    """``<prefix>_<kind>``, or ``<prefix>_<kind>2`` ... when that name is already in use."""
    base = f"{prefix}_{kind}"
    if len(base) < 6:
        base = f"mkt_{base}"
    for n in range(1, 100):
        suffix = "" if n == 1 else str(n)
        name = base[: 32 - len(suffix)] + suffix
        if name not in taken and _API_USER_RE.match(name):
            return name
    return f"mkt_{kind}_{token_source.token_hex(4)}"


def _hook_url(hook: Any) -> str | None:
    if isinstance(hook, dict):
        return hook.get("url") or hook.get("URL")
    return getattr(hook, "url", None)


def _reply_to_html(link: str, sender: Sender) -> str:
    from markupsafe import escape

    return (
        "<p>"
        + str(
            escape(
                _(
                    "Please confirm that replies to mail from %(name)s may go to this address.",
                    name=sender.from_name or sender.from_address,
                )
            )
        )
        + "</p>"
        + f'<p><a href="{escape(link)}">'
        + str(escape(_("Confirm the reply-to address")))
        + "</a></p><p>"
        + str(escape(_("If you did not expect this mail, ignore it.")))
        + "</p>"
    )

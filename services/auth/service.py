"""Access: API keys and dashboard accounts as callers use them, every change audited."""

from __future__ import annotations

from collections.abc import Iterable

from services.audit import AuditLog
from services.auth.accounts import Account, AccountStore
from services.auth.apikeys import ApiKey, KeyStore
from services.auth.principal import Principal, Scope
from services.errors import Forbidden


def user_principal(username: str) -> Principal:
    """A dashboard user: every account is an admin (roles are not yet modelled)."""
    return Principal(f"user:{username}", frozenset({Scope.ADMIN}))


class AccessService:
    """Creates and revokes keys and accounts; turns credentials into principals."""

    def __init__(self, keys: KeyStore, accounts: AccountStore, audit: AuditLog) -> None:
        self.keys = keys
        self.accounts = accounts
        self.audit = audit

    def verify_key(self, token: str) -> ApiKey | None:
        """The key a token belongs to, or None (unknown, wrong secret or revoked)."""
        return self.keys.verify(token)

    def login(self, username: str, password: str) -> str | None:
        """A new session for a user whose password is right, else None (same cost for
        unknown users as for wrong passwords)."""
        account = self.accounts.authenticate(username, password)
        return self.accounts.open_session(account.username) if account is not None else None

    def session(self, username: str, nonce: str) -> Principal | None:
        """The principal of an open dashboard session, else None (logged out, or its
        password changed since)."""
        if not username or not nonce or not self.accounts.session_open(username, nonce):
            return None
        return user_principal(username)

    def logout(self, username: str, nonce: str) -> None:
        """End one dashboard session."""
        self.accounts.close_session(username, nonce)

    def change_password(self, caller: Principal, username: str, old: str, new: str) -> str:
        """A user changes their own password: every session of theirs ends, and the one
        returned replaces the caller's."""
        if caller.name != f"user:{username}":
            raise Forbidden("users change their own password")
        nonce = self.accounts.change_password(username, old, new)
        self.audit.record(caller.name, "account.password", f"user:{username}")
        return nonce

    def create_key(
        self, caller: Principal, name: str, scopes: Iterable[Scope]
    ) -> tuple[ApiKey, str]:
        """A new key and its token (the only time the token exists in clear)."""
        caller.require(Scope.ADMIN)
        key, token = self.keys.create(name, scopes)
        self.audit.record(caller.name, "key.create", key.id, None, key.as_dict())
        return key, token

    def revoke_key(self, caller: Principal, key_id: str) -> None:
        """Revoke a key at once (kept for the record)."""
        caller.require(Scope.ADMIN)
        self.keys.revoke(key_id)
        self.audit.record(caller.name, "key.revoke", key_id)

    def list_keys(self, caller: Principal) -> list[ApiKey]:
        """Every key, revoked ones included (no secrets)."""
        caller.require(Scope.ADMIN)
        return self.keys.list()

    def create_account(self, caller: Principal, username: str, password: str) -> Account:
        """Create a dashboard account (or reset its password)."""
        caller.require(Scope.ADMIN)
        account = self.accounts.create(username, password)
        self.audit.record(caller.name, "account.create", f"user:{account.username}")
        return account

    def usernames(self, caller: Principal) -> list[str]:
        """Every account name."""
        caller.require(Scope.ADMIN)
        return self.accounts.usernames()

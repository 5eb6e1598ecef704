"""Access: API keys and dashboard accounts as callers use them, every change audited."""

from __future__ import annotations

from collections.abc import Iterable

from services.audit import AuditLog
from services.auth.accounts import Account, AccountStore
from services.auth.apikeys import ApiKey, KeyStore
from services.auth.principal import Principal, Role, Scope
from services.errors import Forbidden


def user_principal(username: str, role: Role = Role.ADMIN) -> Principal:
    """A dashboard user, with the scopes of their role."""
    return Principal(f"user:{username}", role.scopes)


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
        role = self.accounts.session_role(username, nonce) if username and nonce else None
        return None if role is None else user_principal(username, role)

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

    def create_account(
        self, caller: Principal, username: str, password: str, role: Role | None = None
    ) -> Account:
        """Create a dashboard account (or reset its password); new ones are admins
        unless ``role`` says otherwise."""
        caller.require(Scope.ADMIN)
        account = self.accounts.create(username, password, role)
        self.audit.record(
            caller.name, "account.create", f"user:{account.username}", None, {"role": account.role}
        )
        return account

    def set_role(self, caller: Principal, username: str, role: Role) -> Account:
        """Change an account's role (never the last admin's away)."""
        caller.require(Scope.ADMIN)
        account = self.accounts.set_role(username, role)
        self.audit.record(caller.name, "account.role", f"user:{username}", None, {"role": role})
        return account

    def delete_account(self, caller: Principal, username: str) -> None:
        """Remove an account and end its sessions (never the last admin)."""
        caller.require(Scope.ADMIN)
        self.accounts.delete(username)
        self.audit.record(caller.name, "account.delete", f"user:{username}")

    def accounts_list(self, caller: Principal) -> list[Account]:
        """Every account with its role."""
        caller.require(Scope.ADMIN)
        return self.accounts.all()

    def usernames(self, caller: Principal) -> list[str]:
        """Every account name."""
        caller.require(Scope.ADMIN)
        return self.accounts.usernames()

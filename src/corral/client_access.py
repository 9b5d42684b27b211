"""The access calls of ``corral.Client``: who am I, projects and their quotas, API tokens
(the routes of :mod:`corral.api.projects`)."""

from __future__ import annotations

from corral.wire import Connection, seg

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import builtins
    from typing import Any

    from corral import views


class AccessCalls(Connection):
    def whoami(self) -> views.Principal:
        """Who this client acts as: a token's name, role and project, or ``local``."""
        out: views.Principal = self.request("GET", "/whoami")
        return out

    def project_create(self, name: str, **quotas: Any) -> views.Project:
        """A project; ``quotas``: ``max_vms``, ``max_cpus``, ``max_memory`` (``"16G"``),
        ``max_disk`` (``"100G"``); absent is no limit."""
        seg(name)
        out: views.Project = self.request("POST", "/projects", {"name": name, **quotas})
        return out

    def project_list(self) -> builtins.list[views.Project]:
        out: builtins.list[views.Project] = self.request("GET", "/projects")
        return out

    def project_show(self, name: str) -> views.Project:
        out: views.Project = self.request("GET", f"/projects/{seg(name)}")
        return out

    def project_set(self, name: str, **quotas: Any) -> views.Project:
        """Change the quotas given (``None``: no limit); the others stay."""
        out: views.Project = self.request("PATCH", f"/projects/{seg(name)}", quotas)
        return out

    def project_rm(self, name: str) -> None:
        """:raises InUse: it still holds VMs, disks, networks, routers or tokens."""
        self.request("DELETE", f"/projects/{seg(name)}")

    def token_create(self, name: str, role: str, project: str = "default",
                     expires: str | None = None) -> views.TokenCreated:
        """A token; its ``secret`` is in this answer only."""
        seg(name)
        body = {"name": name, "role": role, "project": project}
        if expires is not None:
            body["expires"] = expires
        out: views.TokenCreated = self.request("POST", "/tokens", body)
        return out

    def token_list(self) -> builtins.list[views.Token]:
        out: builtins.list[views.Token] = self.request("GET", "/tokens")
        return out

    def token_revoke(self, name: str) -> None:
        """The next request with that token is refused."""
        self.request("DELETE", f"/tokens/{seg(name)}")

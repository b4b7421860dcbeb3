"""Tokens and roles. Every API call carries `Authorization: Bearer <token>`; the database keeps only
the token's sha256. What each role may do is one table (PERMISSIONS) that the routes and the
role-matrix test both read."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    TELEOPERATOR = "teleoperator"  # outcome labels, corrections, demonstrations
    OPERATOR = "operator"  # robots, deployments, rollbacks
    RESEARCHER = "researcher"  # training runs, policy versions, exports
    ADMIN = "admin"  # tokens, audit log; may do everything
    ROBOT = "robot"  # a robot's bridge: heartbeats, episode registration, inference


# action -> roles allowed (admin is allowed everything)
PERMISSIONS: dict[str, frozenset[Role]] = {
    "tokens.create": frozenset({Role.ADMIN}),
    "tokens.revoke": frozenset({Role.ADMIN}),
    "audit.read": frozenset({Role.ADMIN}),
    "robots.register": frozenset({Role.OPERATOR}),
    "robots.heartbeat": frozenset({Role.ROBOT}),
    "episodes.label": frozenset({Role.TELEOPERATOR, Role.OPERATOR}),
    "episodes.upload": frozenset({Role.TELEOPERATOR}),
    "episodes.register": frozenset({Role.ROBOT, Role.TELEOPERATOR}),
    "episodes.ship": frozenset({Role.ROBOT}),  # a robot sends its own committed episodes (robot_bridge/shipper.py)
    "runs.start": frozenset({Role.RESEARCHER}),
    "runs.cancel": frozenset({Role.RESEARCHER}),
    "versions.register": frozenset({Role.RESEARCHER}),
    "deployments.create": frozenset({Role.OPERATOR}),
    "deployments.rollback": frozenset({Role.OPERATOR}),
    "exports.create": frozenset({Role.RESEARCHER}),
}


def allowed(role: Role | str, action: str) -> bool:
    role = Role(role)
    return role == Role.ADMIN or role in PERMISSIONS[action]


def new_token() -> str:
    return "rcp_" + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, its role, and for robot tokens the robot."""

    name: str
    role: Role
    robot_id: str | None = None

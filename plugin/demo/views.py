"""Pages of the demo CRM: login and the contact list.  Further pages live in sibling modules."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import login_required, login_user, logout_user
from sqlalchemy import select

from ..i18n import _
from .models import User, db

bp = Blueprint("crm", __name__, template_folder="templates", url_prefix="/crm")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        user = db.session.scalar(select(User).where(User.username == request.form.get("username", "")))
        if user is None or not user.check_password(request.form.get("password", "")):
            error = _("Wrong user name or password.")
        else:
            login_user(user)
            target = request.args.get("next") or ""
            if not target.startswith("/") or target.startswith("//") or "\\" in target:
                target = url_for("crm.contacts")
            return redirect(target)
    return render_template("demo/login.html", error=error), (401 if error else 200)


@bp.post("/logout")
@login_required
def logout():
    logout_user()
    flash(_("You are logged out."), "info")
    return redirect(url_for("crm.login"))


@bp.get("/contacts")
@login_required
def contacts():
    return render_template("demo/contacts.html")

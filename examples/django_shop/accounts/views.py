"""Views that log Customer.io events without naming the person: CustomerIOMiddleware binds
the logged-in user's id (or the visitor's anonymous id) to every tagged call."""

import logging

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render

from .events import PLANS

log = logging.getLogger(__name__)


@login_required
def signup(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return render(request, "accounts/signup.html", {"plans": PLANS})
    plan = request.POST.get("plan")
    if plan not in PLANS:
        return HttpResponseBadRequest("unknown plan")
    log.info("signed_up", extra={"cio_event": True, "plan": plan})  # no user_id: it is bound
    return HttpResponse(f"Welcome to the {plan} plan, {request.user.get_username()}.")


def pricing(request: HttpRequest) -> HttpResponse:
    log.info("viewed_pricing", extra={"cio_event": True})  # the user, or the anonymous visitor
    return HttpResponse("free: 0, pro: 49, team: 99 (per month)")

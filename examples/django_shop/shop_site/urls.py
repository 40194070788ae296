"""The shop's URLs: log in, sign up for a plan, look at the prices."""

from accounts import views
from django.contrib.auth.views import LoginView
from django.urls import path

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("signup/", views.signup, name="signup"),
    path("pricing/", views.pricing, name="pricing"),
]

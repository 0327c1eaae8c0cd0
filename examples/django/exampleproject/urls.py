"""Django's pages: the admin, sign-in and a page that says who you are."""

from django.contrib import admin
from django.urls import include, path
from orders.views import home

urlpatterns = [
    path("", home, name="home"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]

from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html


def home(request: HttpRequest) -> HttpResponse:
    """A plain Django page: who is signed in, and where JobQL is."""
    user = request.user
    who = (
        format_html("Signed in as {}.", user.get_username())
        if user.is_authenticated
        else "Not signed in."
    )
    return HttpResponse(
        format_html(
            "<p>{} <a href='/accounts/login/'>Sign in</a> with a Django user, then open "
            "<a href='/graphql'>/graphql</a>: the jobs you start there are yours.</p>",
            who,
        )
    )

"""The reference guide's example tasks, declared the JobQL way: each body is plain code that
reads a validated model, reports progress through ``job`` and returns a model, while Celery
handles delivery and retries and JobQL types, records and broadcasts.
"""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from typing import Annotated

from pydantic import Field, JsonValue, ValidatorFunctionWrapHandler, WrapValidator

from tasks import JobContext, JobModel, job
from tasks.core.models import Email
from tasks.core.settings import get_settings


class ProcessDataInput(JobModel):
    data: JsonValue = Field(description="Any JSON value to process.")
    delay: float = Field(default=1.0, ge=0, le=60, description="Seconds the work takes.")


class ProcessDataOutput(JobModel):
    processed: JsonValue
    status: str


@job()
def process_data(input: ProcessDataInput) -> ProcessDataOutput:
    """Process a JSON payload (the guide's synchronous task)."""
    time.sleep(input.delay)
    return ProcessDataOutput(processed=input.data, status="complete")


class SummarizeInput(JobModel):
    results: list[JsonValue] = Field(
        default_factory=list, description="The results to summarize, e.g. a chord's group's."
    )
    fail: bool = Field(default=False, description="Fail instead, to show a failing step.")


class SummarizeOutput(JobModel):
    count: int
    results: list[JsonValue]


@job()
def summarize(input: SummarizeInput) -> SummarizeOutput:
    """Gather several results into one (the body of the README's chord)."""
    if input.fail:
        raise ValueError("asked to fail")
    return SummarizeOutput(count=len(input.results), results=input.results)


class ProcessDataAsyncOutput(JobModel):
    processed: JsonValue
    is_async: bool = Field(alias="async")
    coroutine: str = Field(description="The asyncio task the body ran in.")


@job()
async def process_data_async(input: ProcessDataInput, job: JobContext) -> ProcessDataAsyncOutput:
    """Process a JSON payload in an ``async def`` body, awaited on the worker's event loop."""
    await job.aprogress(0, 1, "started")
    await asyncio.sleep(input.delay)
    await job.aprogress(1, 1, "done")
    running = asyncio.current_task()
    return ProcessDataAsyncOutput(
        processed=input.data,
        is_async=True,
        coroutine=running.get_name() if running else "",
    )


class GenerateReportInput(JobModel):
    user_id: int = Field(description="Whose report to build.")
    steps: int = Field(default=100, ge=1, le=10_000, description="How many steps it takes.")
    step_delay: float = Field(default=0.1, ge=0, le=10, description="Seconds per step.")
    log_every: int = Field(
        default=0, ge=0, description="Log a line (`Job.logs`) every this many steps; 0: none."
    )


class GenerateReportOutput(JobModel):
    user_id: int
    report_url: str


@job()
def generate_report(input: GenerateReportInput, job: JobContext) -> GenerateReportOutput:
    """Build a user's report, reporting progress after every step."""
    for step in range(1, input.steps + 1):
        time.sleep(input.step_delay)
        job.progress(step, input.steps, f"step {step} of {input.steps}")
        if input.log_every and step % input.log_every == 0:
            job.log(f"step {step} of {input.steps} done for user {input.user_id}")
    return GenerateReportOutput(user_id=input.user_id, report_url=f"/reports/{input.user_id}.pdf")


class TransientEmailError(Exception):
    """The mail server said "try again later"."""


class PermanentEmailError(Exception):
    """The mail can never be delivered; retrying would not help."""


RESERVED_DOMAIN = ".invalid"


def _reserved_domain_passes(address: object, check: ValidatorFunctionWrapHandler) -> str:
    """Let ``.invalid`` through, checked as if it were ``example.com``: email-validator
    refuses it, but RFC 2606 reserves it for just this, an address that can never receive
    mail, which ``send_email`` uses to show a permanent failure."""
    if not isinstance(address, str) or not address.lower().endswith(RESERVED_DOMAIN):
        return str(check(address))
    check(address[: -len(RESERVED_DOMAIN)] + ".example.com")
    return address


# The shared Email type (the same ``Email`` scalar in GraphQL), plus the reserved domain.
Recipient = Annotated[Email, WrapValidator(_reserved_domain_passes)]


class SendEmailInput(JobModel):
    to: Recipient = Field(description="Who gets it.")
    subject: str = Field(min_length=1, max_length=998, description="The subject line.")
    body: str = Field(max_length=1_000_000, description="The plain-text body.")
    simulate_transient_failures: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Fail this many attempts with a transient error first, to show retries.",
    )


class SendEmailOutput(JobModel):
    message_id: str
    to: str
    attempts: int


@job(
    autoretry_for=(TransientEmailError,),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
)
def send_email(input: SendEmailInput, job: JobContext) -> SendEmailOutput:
    """Send an email into the outbox folder; transient errors retry with backoff and jitter.

    A recipient at the reserved ``.invalid`` domain fails permanently, without retrying.
    """
    if input.to.lower().endswith(RESERVED_DOMAIN):
        raise PermanentEmailError(f"no mail server accepts mail for {input.to}")
    if job.retries < input.simulate_transient_failures:
        raise TransientEmailError(f"mail server busy (attempt {job.retries + 1})")
    message = EmailMessage()
    message["To"], message["Subject"] = input.to, input.subject
    message["Message-ID"] = f"<{job.id}@jobql.local>"
    message.set_content(input.body)
    outbox = get_settings().outbox
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / f"{job.id}.eml").write_bytes(bytes(message))
    return SendEmailOutput(message_id=message["Message-ID"], to=input.to, attempts=job.retries + 1)

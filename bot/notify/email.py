"""E-mail: plain text and HTML alternatives over SMTP (aiosmtplib), with STARTTLS, implicit TLS or neither."""

from __future__ import annotations

import html
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from bot.notify.base import DeliveryError
from bot.notify.message import Message, plain_text
from config.notify import NotifyTarget

_COLOURS = {"success": "#2da44e", "fixed": "#2da44e", "failure": "#cf222e", "error": "#bf8700",
            "cancelled": "#8c959f"}


def subject(message: Message) -> str:
    return f"[forgeci] {message.title}"


def html_body(message: Message) -> str:
    e = html.escape
    rows = [("Repository", message.repo), ("Branch", message.branch),
            ("Commit", f"{message.short_sha} {message.commit}".strip()), ("Pushed by", message.pusher or "-")]
    parts = [f'<h2 style="color:{_COLOURS.get(message.event, "#333")}">{e(message.title)}</h2>', "<table>"]
    parts += [f"<tr><th align=left>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    parts.append("</table>")
    if message.error:
        parts.append(f"<p><b>Error:</b> {e(message.error)}</p>")
    for job in message.failed:
        where = f"step {job.step} (exit {job.exit_code})" if job.step else (job.error or job.state)
        parts.append(f'<h3><a href="{e(job.url)}">{e(job.name)}</a>: {e(job.state)} at {e(where)}</h3>')
        if job.log:
            parts.append("<pre>" + e("\n".join(job.log)) + "</pre>")
    parts.append(f'<p><a href="{e(message.url)}">Open pipeline #{message.pipeline_id}</a></p>')
    return "<!doctype html><html><body>" + "\n".join(parts) + "</body></html>"


def build(target: NotifyTarget, message: Message, delivery: str) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = subject(message)
    mail["From"] = target.from_addr
    mail["To"] = ", ".join(target.to)
    mail["Date"] = formatdate(localtime=False)
    domain = target.from_addr.rsplit("@", 1)[-1]
    mail["Message-ID"] = make_msgid(f"forgeci.{delivery}", domain=domain)
    mail["X-Forgeci-Event"] = message.event
    mail.set_content(plain_text(message))
    mail.add_alternative(html_body(message), subtype="html")
    return mail


async def send(target: NotifyTarget, message: Message, delivery: str, *, user: str | None, password: str | None,
               timeout: float) -> None:
    host, port = target.smtp_host
    context = ssl.create_default_context(cafile=target.ca_file or None)
    implicit = target.tls == "tls" or target.smtp.startswith("smtps://")
    try:
        await aiosmtplib.send(
            build(target, message, delivery), hostname=host, port=port, username=user, password=password,
            use_tls=implicit, start_tls=target.tls == "starttls" and not implicit,
            tls_context=context if target.tls != "none" or implicit else None, timeout=timeout)
    except aiosmtplib.SMTPResponseException as exc:
        # 5xx is the server's final word (a refused recipient, bad credentials); 4xx says try again later.
        raise DeliveryError(f"SMTP {exc.code} {exc.message[:200]}", permanent=500 <= exc.code < 600) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise DeliveryError(f"SMTP: {type(exc).__name__}: {str(exc)[:200]}") from None

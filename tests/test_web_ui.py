"""The web UI end to end in headless Chromium (Debian's ``chromium`` driven by Playwright, never a
downloaded browser): log in, watch a queue fill without reloading, get, purge, publish, close a
connection, log out; the queues list filtered, sorted and paged; a queue's page with its figures
explained. Screenshots are kept in ``test-artifacts/web-ui``. ``.ci/run`` installs Chromium;
without it these tests are skipped, saying so."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from amqpbroker.testing import free_port

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="no /usr/bin/chromium (Debian package 'chromium'; .ci/run installs it)")


@pytest.fixture
def page_and_broker(start_broker) -> Iterator[tuple]:
    from playwright.sync_api import sync_playwright

    broker = start_broker(management_port=free_port())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(10_000)
            yield page, broker
        finally:
            browser.close()


def test_the_web_ui_shows_live_figures_and_acts_on_queues_and_connections(page_and_broker) -> None:
    page, broker = page_and_broker
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.queue_declare("ui-queue")

    page.goto(f"http://127.0.0.1:{broker.management_port}/")
    page.fill("#password", "wrong")
    page.click("#login-button")
    page.wait_for_selector("#error:has-text('login failed')")
    page.fill("#password", "guest")
    page.click("#login-button")
    page.wait_for_selector("#total-connections:has-text('1')")  # the overview, live
    assert not page.is_visible("#login")  # the login form goes once logged in
    answers = []
    page.on("dialog", lambda dialog: (answers.append(dialog.message), dialog.accept()))

    page.click("nav button[data-tab=queues]")
    ready = page.locator("tr[data-queue='ui-queue'] td.ready")
    ready.wait_for()
    assert ready.inner_text() == "0"
    for index in range(3):
        channel.basic_publish("", "ui-queue", f"message {index}".encode())
    channel.queue_declare("ui-queue", passive=True)
    page.wait_for_selector("tr[data-queue='ui-queue'] td.ready:has-text('3')")  # no reload

    page.click("tr[data-queue='ui-queue'] button:has-text('Get')")
    page.wait_for_selector("#got-messages:has-text('message 0')")
    # got and requeued: each came back once
    page.wait_for_selector("tr[data-queue='ui-queue'] td.redelivered:has-text('3 / 0 / 0')")
    page.click("tr[data-queue='ui-queue'] button:has-text('Purge')")
    page.wait_for_selector("tr[data-queue='ui-queue'] td.ready:has-text('0')")
    assert answers == ["Drop every ready message of queue ui-queue?"]  # asked first

    page.click("nav button[data-tab=exchanges]")
    page.wait_for_selector("#publish-exchange option", state="attached")
    page.select_option("#publish-exchange", "/\u0000amq.default")
    page.fill("#publish-key", "ui-queue")
    page.fill("#publish-payload", "from the browser")
    page.click("#publish-button")
    page.wait_for_selector("#publish-result:has-text('Message published.')")
    assert channel.basic_get("ui-queue", auto_ack=True)[2] == b"from the browser"
    channel.exchange_declare("ui-x", "topic")
    channel.exchange_declare("ui-y", "fanout")
    channel.queue_bind("ui-queue", "ui-x", "ui.#")
    channel.exchange_bind("ui-y", "ui-x", "to-y")
    page.wait_for_selector("tr[data-exchange='ui-y']")
    page.click("tr[data-exchange='ui-x'] button:has-text('Bindings')")
    page.wait_for_selector("#exchange-bindings:has-text('from it (2)')")
    assert 'ui-x → ui-queue (queue) key "ui.#"' in page.inner_text("#exchange-bindings")
    page.click("tr[data-exchange='ui-y'] button:has-text('Bindings')")
    page.wait_for_selector("#exchange-bindings:has-text('to it (1)')")

    page.click("nav button[data-tab=channels]")
    page.wait_for_selector("#channel-rows td:has-text('running')")

    page.click("nav button[data-tab=connections]")
    page.click("tr[data-connection] button:has-text('Close')")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(20):
            connection.process_data_events(time_limit=0.25)
    assert closed.value.reply_code == 320
    assert answers[-1].startswith("Close connection ")

    page.click("#logout")  # back to the login form; the session is forgotten
    page.wait_for_selector("#login", state="visible")
    assert not page.is_visible("#tabs") and not page.is_visible("#logout")
    assert page.evaluate("sessionStorage.getItem('amqpbroker-auth')") is None
    page.reload()
    assert page.is_visible("#login")


def test_the_admin_tab_manages_users_vhosts_permissions_policies_and_limits(page_and_broker) -> None:
    page, broker = page_and_broker
    answers = []
    page.on("dialog", lambda dialog: (answers.append(dialog.message), dialog.accept()))
    page.goto(f"http://127.0.0.1:{broker.management_port}/")
    page.fill("#password", "guest")
    page.click("#login-button")
    page.click("nav button[data-tab=admin]")
    page.wait_for_selector("tr[data-user='guest']")

    page.fill("#vhost-name", "ui-vhost")
    page.fill("#vhost-description", "made in the browser")
    page.click("#vhost-form button")
    page.wait_for_selector("tr[data-vhost='ui-vhost']")
    page.fill("#user-name", "ui-user")
    page.fill("#user-password", "ui-pw")
    page.fill("#user-tags", "monitoring")
    page.click("#user-form button")
    page.wait_for_selector("tr[data-user='ui-user']")
    page.fill("#permission-user", "ui-user")
    page.fill("#permission-vhost", "ui-vhost")
    page.fill("#permission-configure", "^ui\\.")
    page.click("#permission-form button")
    page.wait_for_selector("tr[data-permission='ui-user@ui-vhost']")
    page.fill("#policy-name", "ui-cap")
    page.fill("#policy-pattern", "^ui")
    page.fill("#policy-definition", "not json")
    page.click("#policy-form button")
    page.wait_for_selector("#admin-result:has-text('must be JSON')")
    page.fill("#policy-definition", '{"max-length": 5}')
    page.click("#policy-form button")
    page.wait_for_selector("tr[data-policy='ui-cap']")

    page.select_option("#limit-kind", "vhost")
    page.fill("#limit-owner", "ui-vhost")
    page.select_option("#limit-name", "max-queues")
    page.fill("#limit-value", "1")
    page.click("#limit-form button")
    page.wait_for_selector("tr[data-limit='vhost:ui-vhost:max-queues']")
    page.select_option("#limit-kind", "user")
    page.fill("#limit-owner", "ui-user")
    page.select_option("#limit-name", "max-queues")  # not a user limit: the API's reason is shown
    page.click("#limit-form button")
    page.wait_for_selector("#admin-result:has-text('max-queues')")

    credentials = pika.PlainCredentials("ui-user", "ui-pw")
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port, "ui-vhost",
                                                           credentials)) as connection:
        channel = connection.channel()
        channel.queue_declare("ui.q")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:  # the limit set in the page
            channel.queue_declare("ui.q2")
        assert refused.value.reply_code == 406
    page.click("tr[data-limit='vhost:ui-vhost:max-queues'] button:has-text('Clear')")
    page.wait_for_selector("tr[data-limit='vhost:ui-vhost:max-queues']", state="detached")

    page.click("tr[data-vhost='ui-vhost'] button:has-text('Delete')")  # asks first
    page.wait_for_selector("tr[data-vhost='ui-vhost']", state="detached")
    assert any("Delete vhost ui-vhost" in answer for answer in answers)
    page.click("tr[data-user='ui-user'] button:has-text('Delete')")
    page.wait_for_selector("tr[data-user='ui-user']", state="detached")


def test_the_exchanges_tab_shows_and_purges_what_a_delayed_exchange_holds(page_and_broker) -> None:
    page, broker = page_and_broker
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port)) as connection:
        channel = connection.channel()
        channel.exchange_declare("ui-later", "x-delayed-message", arguments={"x-delayed-type": "direct"})
        channel.basic_publish("ui-later", "k", b"wait for it", pika.BasicProperties(headers={"x-delay": 600_000}))
    answers = []
    page.on("dialog", lambda dialog: (answers.append(dialog.message), dialog.accept()))
    page.goto(f"http://127.0.0.1:{broker.management_port}/")
    page.fill("#password", "guest")
    page.click("#login-button")
    page.click("nav button[data-tab=exchanges]")
    page.wait_for_selector("tr[data-exchange='ui-later'] td:nth-child(5):has-text('1')")
    page.click("tr[data-exchange='ui-later'] button:has-text('Held')")
    page.wait_for_selector("#held-messages:has-text('wait for it')")
    page.click("tr[data-exchange='ui-later'] button:has-text('Purge held')")
    page.wait_for_selector("tr[data-exchange='ui-later'] td:nth-child(5):has-text('0')")
    assert any("Drop every message exchange ui-later holds?" in answer for answer in answers)


ARTIFACTS = Path(os.environ.get("WEB_UI_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts" / "web-ui"))


def _screenshot(page, name: str) -> None:
    """Kept as a test artifact (``test-artifacts/web-ui``, or ``$WEB_UI_ARTIFACTS``)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _log_in(page, broker) -> None:
    page.goto(f"http://127.0.0.1:{broker.management_port}/")
    page.fill("#password", "guest")
    page.click("#login-button")
    page.wait_for_selector("#node-facts dd")


def test_the_queues_tab_filters_sorts_naturally_and_pages_many_queues(page_and_broker) -> None:
    page, broker = page_and_broker
    with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
        channel = connection.channel()
        for index in range(1, 151):
            channel.queue_declare(f"celery_delayed_{index}")
        channel.queue_declare("jobs", durable=True, arguments={"x-queue-type": "quorum"})
    _log_in(page, broker)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.click("nav button[data-tab=queues]")
    page.wait_for_selector("#queue-page-info:has-text('page 1 of 2: 151 of 151 queues')")
    names = page.locator("#queue-rows tr a.queue-link").all_inner_texts()
    assert names[:3] == ["celery_delayed_1", "celery_delayed_2", "celery_delayed_3"]  # 2 before 10
    assert len(names) == 100
    page.click("#queue-next")
    page.wait_for_selector("#queue-page-info:has-text('page 2 of 2')")
    assert page.locator("#queue-rows tr").count() == 51
    page.click("button.sort[data-sort=name]")  # descending now
    page.wait_for_selector("button.sort[data-sort=name][aria-sort=descending]")
    page.fill("#queue-name-filter", "^celery_delayed_1[0-9]$")
    page.click("#queue-filter button[type=submit]")
    page.wait_for_selector("#queue-page-info:has-text('10 of 151 queues')")
    assert page.locator("#queue-rows tr a.queue-link").all_inner_texts()[0] == "celery_delayed_19"
    page.fill("#queue-name-filter", "")
    page.select_option("#queue-type-filter", "quorum")
    page.click("#queue-filter button[type=submit]")
    page.wait_for_selector("#queue-page-info:has-text('page 1 of 1: 1 of')")
    assert page.locator("#queue-rows tr a.queue-link").all_inner_texts() == ["jobs"]
    _screenshot(page, "queues-1280")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the table scrolls, the page does not
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    _screenshot(page, "queues-phone")


def test_a_queue_s_page_explains_its_figures_and_acts_on_it(page_and_broker) -> None:
    page, broker = page_and_broker
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.queue_declare("detail", durable=True, arguments={"x-max-length": 1000})
    for index in range(5):
        channel.basic_publish("", "detail", f"job {index}".encode())
    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=1)
    consumer.basic_consume("detail", lambda *args: None, consumer_tag="slow-worker")  # takes one, never acks
    connection.process_data_events(time_limit=0.3)
    answers = []
    page.on("dialog", lambda dialog: (answers.append(dialog.message), dialog.accept()))
    _log_in(page, broker)
    assert "of" in page.inner_text("#node-memory") and page.inner_text("#node-alarms") == "none"
    assert page.inner_text("#node-fds").split(" of ")[0].isdigit()
    _screenshot(page, "overview")
    page.wait_for_selector("#chart-rates polyline", state="attached")  # the last minutes, from the broker
    unnamed = page.evaluate("""[...document.querySelectorAll('input, select')]
        .filter(c => !c.labels.length && !c.getAttribute('aria-label')).map(c => c.id)""")
    assert unnamed == []  # every control has a label or an accessible name
    page.click("nav button[data-tab=queues]")
    page.click("#queue-rows a.queue-link:has-text('detail')")
    page.wait_for_selector("#queue-title:has-text('Queue detail in vhost /')")
    page.wait_for_selector("#queue-ready:has-text('4')")
    assert '{"x-max-length":1000}' in page.inner_text("#queue-arguments")
    page.wait_for_selector("#queue-consumer-rows td:has-text('slow-worker')")
    assert page.inner_text("#queue-bindings") == 'from (AMQP default) with key "detail"'
    assert "how busy the consumers are" in page.inner_text("#queue-figures").lower()
    assert page.inner_text("#queue-prediction")  # a prediction, or why there is none yet
    page.select_option("#queue-ackmode", "ack_requeue_false")
    page.fill("#queue-get-count", "2")
    page.click("#queue-get-button")
    page.wait_for_selector("#queue-got:has-text('job 1')")
    page.wait_for_selector("#queue-ready:has-text('2')")  # taken for good (automatic ack)
    page.fill("#queue-publish-payload", "from the page")
    page.click("#queue-publish-form button[type=submit]")
    page.wait_for_selector("#queue-publish-result:has-text('Message published.')")
    page.wait_for_selector("#queue-ready:has-text('3')")
    _screenshot(page, "queue-detail")
    page.click("#queue-purge")
    page.wait_for_selector("#queue-ready:has-text('0')")
    page.click("#queue-delete")
    page.wait_for_selector("#queues:not([hidden])")
    assert answers == ["Drop every ready message of queue detail?", "Delete queue detail with its messages?"]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        connection.channel().queue_declare("detail", passive=True)
    connection.close()


def test_the_console_works_from_the_keyboard_alone(page_and_broker) -> None:
    page, broker = page_and_broker
    with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
        connection.channel().queue_declare("keyboard-queue")
    page.goto(f"http://127.0.0.1:{broker.management_port}/")
    page.focus("#username")
    page.keyboard.press("Tab")  # to the password
    page.keyboard.type("guest")
    page.keyboard.press("Enter")  # submits the login form
    page.wait_for_selector("#node-facts dd")
    page.focus("nav button[data-tab=overview]")
    page.keyboard.press("Tab")  # to Queues
    page.keyboard.press("Enter")
    link = page.locator("#queue-rows a.queue-link:has-text('keyboard-queue')")
    link.wait_for()
    link.focus()
    page.keyboard.press("Enter")  # opens the queue's page
    page.wait_for_selector("#queue-title:has-text('Queue keyboard-queue')")
    page.focus("#queue-back")
    page.keyboard.press("Enter")
    page.wait_for_selector("#queues:not([hidden])")


def test_a_stream_s_page_shows_its_offsets_size_retention_and_consumer_offsets(page_and_broker) -> None:
    page, broker = page_and_broker
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.queue_declare("events", durable=True, arguments={"x-queue-type": "stream", "x-max-age": "7D"})
    channel.confirm_delivery()
    for index in range(12):
        channel.basic_publish("", "events", f"event {index}".encode())
    reader = connection.channel()
    reader.basic_qos(prefetch_count=5)
    reader.basic_consume("events", lambda *args: None, consumer_tag="replayer", arguments={"x-stream-offset": 4})
    connection.process_data_events(time_limit=0.5)
    _log_in(page, broker)
    page.click("nav button[data-tab=queues]")
    page.click("#queue-rows a.queue-link:has-text('events')")
    page.wait_for_selector("#queue-title:has-text('Queue events in vhost /')")
    page.wait_for_selector("#stream-offsets:has-text('0 to 11')")
    facts = page.inner_text("#queue-facts")
    assert "Type\nstream" in facts and "at most 7.0 days old" in facts
    assert "Stream size\n86 bytes in 1 segment, " in facts  # (12 bodies "event N")
    page.wait_for_selector("#queue-consumer-rows tr:has-text('replayer') td:has-text('9')")  # read 4..8, next is 9
    _screenshot(page, "stream-detail")
    connection.close()

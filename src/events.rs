//! Slot events for `C_WaitForSlotEvent`: a WLD slot's token appeared or
//! disappeared, because its first member came up or its last went down.

use crate::waits::{self, Condvar, Mutex};
use cryptoki_sys::*;
use std::collections::VecDeque;

#[derive(Default)]
struct Queue {
    slots: VecDeque<CK_SLOT_ID>,
    shut_down: bool,
}

#[derive(Default)]
pub struct SlotEvents {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The outcome of a wait for a slot event.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    Event(CK_SLOT_ID),
    NoEvent,
    ShutDown,
}

impl SlotEvents {
    /// Records an event on `slot`, once until it is read.
    pub fn push(&self, slot: CK_SLOT_ID) {
        let mut queue = waits::lock(&self.queue);
        if !queue.slots.contains(&slot) {
            queue.slots.push_back(slot);
        }
        self.ready.notify_one();
    }

    /// Returns the oldest event, waiting for one when `block` is set.
    pub fn wait(&self, block: bool) -> Wait {
        let mut queue = waits::lock(&self.queue);
        loop {
            if queue.shut_down {
                return Wait::ShutDown;
            }
            if let Some(slot) = queue.slots.pop_front() {
                return Wait::Event(slot);
            }
            if !block {
                return Wait::NoEvent;
            }
            queue = waits::wait(&self.ready, queue);
        }
    }

    /// Wakes every waiter for `C_Finalize`.
    pub fn shut_down(&self) {
        waits::lock(&self.queue).shut_down = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn events_queue_once() {
        let events = SlotEvents::default();
        assert_eq!(events.wait(false), Wait::NoEvent);
        events.push(3);
        events.push(3);
        events.push(1);
        assert_eq!(events.wait(false), Wait::Event(3));
        assert_eq!(events.wait(false), Wait::Event(1));
        assert_eq!(events.wait(false), Wait::NoEvent);
    }

    #[test]
    fn shut_down_wakes_waiter() {
        let events = Arc::new(SlotEvents::default());
        let waiter = {
            let events = events.clone();
            std::thread::spawn(move || events.wait(true))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        events.shut_down();
        assert_eq!(waiter.join().unwrap(), Wait::ShutDown);
    }
}

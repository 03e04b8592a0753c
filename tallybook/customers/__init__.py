"""Customers and the attribution of event subjects to them."""

from tallybook.customers.errors import (
    ConcurrentChange,
    CustomerError,
    CustomerKeyConflict,
    CustomerNotFound,
    InvalidCustomer,
    SubjectConflict,
)
from tallybook.customers.models import (
    Address,
    Customer,
    CustomerInput,
    CustomerListQuery,
    CustomerPage,
    SeenSubject,
)
from tallybook.customers.service import CustomerService
from tallybook.customers.validation import parse_customer

__all__ = [
    "Address",
    "ConcurrentChange",
    "Customer",
    "CustomerError",
    "CustomerInput",
    "CustomerKeyConflict",
    "CustomerListQuery",
    "CustomerNotFound",
    "CustomerPage",
    "CustomerService",
    "InvalidCustomer",
    "SeenSubject",
    "SubjectConflict",
    "parse_customer",
]

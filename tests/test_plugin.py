import pytest

from automtl import Problem, UserError, get_problem


def test_user_problem_loads_with_options(user_problems):
    problem = get_problem("user_problem:make", n=32, seed=1)
    assert isinstance(problem, Problem)
    assert problem.task_names == ["sign", "big"]
    assert len(problem.train) == 32
    outputs = problem.build_model()(problem.test.inputs)
    assert set(outputs) == {"sign", "big"}


@pytest.mark.parametrize(
    "reference, message",
    [
        ("user_problem", "unknown"),
        ("user_problem:", "must be written 'package.module:function'"),
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("user_problem:missing", "has no attribute 'missing'"),
        ("user_problem:NOT_CALLABLE", "not callable"),
        ("user_problem:not_a_problem", "returned dict; it must return automtl.Problem"),
    ],
)
def test_user_problem_errors_are_clear(user_problems, reference, message):
    with pytest.raises(UserError, match=message):
        get_problem(reference)


def test_user_problem_unknown_option(user_problems):
    with pytest.raises(UserError, match="no option 'size'.*allowed.*'n'"):
        get_problem("user_problem:make", size=3)

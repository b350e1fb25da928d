from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'guard_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml', 'README.md']),
        (os.path.join('share', package_name, 'launch'), glob('launch/*.launch.py')),
        (os.path.join('share', package_name, 'config'), glob('config/*.yaml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='embodied-guard maintainers',
    maintainer_email='maintainers@embodied-guard.org',
    description='The embodied-guard runtime safety guard as a ROS 2 lifecycle node.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'guard_node = guard_ros.guard_node:main',
            'bag_player = guard_ros.bag_player:main',
            'guard_bench = guard_ros.bench:main',
        ],
    },
)
